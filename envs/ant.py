"""Ant goal-velocity, direction and goal-position tasks (Finn et al. 2017, section 5.3).

Model, dynamics and termination are Gymnasium's ``Ant-v5`` (single envs subclass
``gymnasium.envs.mujoco.ant_v5.AntEnv``) with ``include_cfrc_ext_in_observation=False``
(observation: ``qpos[2:]`` and ``qvel``, 27 numbers; AntGoal keeps ``qpos[:2]``, 29 numbers, so
that the goal is observable). The episode terminates when the state is not finite or the torso
height ``qpos[2]`` leaves ``healthy_z_range`` = [0.2, 1.0]. Rewards follow the authors' code
(cbfinn/maml_rl ``ant_env_rand.py``, ``ant_env_rand_direc.py``):

* velocity (``AntVel``): ``r = -|v - v_goal| + 1.0 - ctrl - contact + 0.05``,
  v_goal ~ U[low, high] (paper: [0, 3]);
* direction (``AntDir``): ``r = d * v - ctrl - contact + 0.05``, d in {-1, +1};
* goal position (``AntGoal``, from later ports: PEARL / rand_param_envs ``ant_rand_goal.py``,
  "ant-goal"): ``r = -||xy - goal||_1 + 4.0 - ctrl - contact + 0.05``, goal ~ U[low, high]^2
  (paper's ports: [-3, 3]^2), ``xy = qpos[0:2]`` after the step;

with ``ctrl = 0.005 * ||a||^2``, ``contact = 0.0005 * sum(clip(cfrc_ext, -1, 1)^2)``, survive
reward 0.05 on every step (as the authors' code, not only while healthy), and
``v = (qpos[0]_after - qpos[0]_before) / dt``. ``info`` holds ``reward_forward`` (or
``reward_goal``), ``reward_bonus`` (velocity/goal constant), ``reward_ctrl``,
``reward_contact``, ``reward_survive`` (summing to the reward) and ``x_velocity``.

Contact forces: ``cfrc_ext`` is not part of the MuJoCo state, so the model gets one contact
sensor per body (``reduce="netforce"``: net contact force, torque and application point) and a
``subtreecom`` sensor; the per-body external wrench about the subtree centre of mass is
``[tau + (p - com) x f, f]``, which equals ``-cfrc_ext`` from ``mj_rnePostConstraint`` for the
state at which the last physics substep's forces were computed (the sign does not matter after
symmetric clipping and squaring). Single and batched envs use the same sensors, so their rewards
are equal. Gymnasium's own Ant-v5 calls ``mj_rnePostConstraint`` after an RK4 step, whose
contact data then belong to the last Runge-Kutta stage: its contact cost is not this one.
The x velocity also differs from Ant-v5's ``info["x_velocity"]``, which uses the torso ``xpos``
(one substep stale); here it is computed from ``qpos[0]`` as the authors' code intends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mujoco
import numpy as np
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from gymnasium.utils import EzPickle

from maml_envs.mujoco_vector import MujocoTaskVectorEnv, gymnasium_asset
from maml_envs.rewards import (
    control_cost,
    direction_term,
    goal_position_l1_term,
    goal_velocity_term,
    sum_terms,
)
from maml_envs.task_family import TaskFamilyEnv, TaskSpace, check_actions
from maml_envs.tasks import (
    Direction,
    DirectionTaskSpace,
    GoalPosition,
    GoalPositionTaskSpace,
    GoalVelocity,
    VelocityTaskSpace,
)

CTRL_COST_WEIGHT = 0.005
CONTACT_COST_WEIGHT = 5e-4
SURVIVE_REWARD = 0.05
CONTACT_FORCE_RANGE = (-1.0, 1.0)
_SENSOR_WIDTH = 9  # force (3), torque (3), position (3) of each body's net contact


def ant_model(xml_path: str) -> mujoco.MjModel:
    """Ant-v5's model plus contact sensors: per body ``contact`` (reduce="netforce", data
    "force torque pos") in body order 1..nbody-1, then ``subtreecom`` of the torso."""
    spec = mujoco.MjSpec.from_file(xml_path)
    bodies = spec.bodies  # world first, then depth-first: the compiled body order
    for index, body in enumerate(bodies[1:], start=1):
        if not body.name:
            body.name = f"_maml_body_{index}"
    data_spec = 2 | 4 | 16  # mjtConDataType bits: force, torque, pos
    reduce_netforce = 3
    for body in bodies[1:]:
        spec.add_sensor(
            name=f"_maml_contact_{body.name}",
            type=mujoco.mjtSensor.mjSENS_CONTACT,
            objtype=mujoco.mjtObj.mjOBJ_BODY,
            objname=body.name,
            intprm=[data_spec, reduce_netforce, 1],
        )
    spec.add_sensor(
        name="_maml_subtree_com",
        type=mujoco.mjtSensor.mjSENS_SUBTREECOM,
        objtype=mujoco.mjtObj.mjOBJ_BODY,
        objname=bodies[1].name,
    )
    return spec.compile()


def contact_cost(
    sensordata: np.ndarray,
    nbody: int,
    weight: float = CONTACT_COST_WEIGHT,
    force_range: tuple[float, float] = CONTACT_FORCE_RANGE,
) -> np.ndarray:
    """``weight * sum(clip(cfrc_ext[1:], *force_range)^2)`` from :func:`ant_model`'s sensors.

    ``sensordata`` is (nsensordata,) or (N, nsensordata); ``nbody`` counts the world body.
    """
    nb = nbody - 1
    lead = sensordata.shape[:-1]
    block = sensordata[..., : nb * _SENSOR_WIDTH].reshape(*lead, nb, _SENSOR_WIDTH)
    force, torque, point = block[..., 0:3], block[..., 3:6], block[..., 6:9]
    com = sensordata[..., nb * _SENSOR_WIDTH : nb * _SENSOR_WIDTH + 3]
    torque_com = torque + np.cross(point - com[..., None, :], force)
    low, high = force_range
    squares = np.square(np.clip(torque_com, low, high)) + np.square(np.clip(force, low, high))
    return weight * np.sum(squares, axis=(-2, -1))


TaskTerm = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _velocity_terms(v: Any, xy: Any, params: np.ndarray) -> dict[str, Any]:
    bonus = np.ones_like(np.asarray(v, dtype=np.float64))
    return {"reward_forward": goal_velocity_term(v, params), "reward_bonus": bonus}


def _direction_terms(v: Any, xy: Any, params: np.ndarray) -> dict[str, Any]:
    return {"reward_forward": direction_term(v, params)}


def _goal_terms(v: Any, xy: Any, params: np.ndarray) -> dict[str, Any]:
    bonus = np.full(np.shape(v), 4.0)
    return {"reward_goal": goal_position_l1_term(xy, params), "reward_bonus": bonus}


def ant_reward_terms(
    task_terms: Callable[..., dict[str, Any]],
    x_velocity: Any,
    xy: np.ndarray,
    action: np.ndarray,
    params: np.ndarray,
    contact: Any,
    ctrl_cost_weight: float,
    survive_reward: float,
) -> dict[str, Any]:
    """The task terms, then ``reward_ctrl``, ``reward_contact``, ``reward_survive``."""
    return {
        **task_terms(x_velocity, xy, params),
        "reward_ctrl": -control_cost(action, ctrl_cost_weight),
        "reward_contact": -contact,
        "reward_survive": np.full(np.shape(x_velocity), survive_reward),
    }


class AntTaskEnv(TaskFamilyEnv, AntEnv):
    """Ant-v5 with the authors' task rewards; base of the ant families.

    Args:
        task_space, task_terms: task distribution and task reward terms ``f(v, xy, params)``.
        task: initial task (default ``task_space.default``).
        ctrl_cost_weight, contact_cost_weight, healthy_reward: 0.005, 5e-4, 0.05 (survive).
        **kwargs: other ``AntEnv`` arguments (``healthy_z_range``, ``reset_noise_scale``,
            ``exclude_current_positions_from_observation``, ...).
    """

    def __init__(
        self,
        task_space: TaskSpace[Any],
        task_terms: Callable[..., dict[str, Any]],
        task: Any = None,
        ctrl_cost_weight: float = CTRL_COST_WEIGHT,
        contact_cost_weight: float = CONTACT_COST_WEIGHT,
        healthy_reward: float = SURVIVE_REWARD,
        include_cfrc_ext_in_observation: bool = False,
        **kwargs: Any,
    ):
        AntEnv.__init__(
            self,
            ctrl_cost_weight=ctrl_cost_weight,
            contact_cost_weight=contact_cost_weight,
            healthy_reward=healthy_reward,
            include_cfrc_ext_in_observation=include_cfrc_ext_in_observation,
            **kwargs,
        )
        self._task_terms = task_terms
        self._init_task_family(task_space, task)

    def _initialize_simulation(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        model = ant_model(self.fullpath)
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        return model, mujoco.MjData(model)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = check_actions(action, self.action_space.shape)
        x_before = self.data.qpos[0]
        self.do_simulation(action, self.frame_skip)
        x_velocity = (self.data.qpos[0] - x_before) / self.dt
        contact = contact_cost(
            self.data.sensordata,
            self.model.nbody,
            self._contact_cost_weight,
            self._contact_force_range,
        )
        terms = ant_reward_terms(
            self._task_terms,
            x_velocity,
            self.data.qpos[:2],
            action,
            self.task_params,
            contact,
            self._ctrl_cost_weight,
            self._healthy_reward,
        )
        terminated = (not self.is_healthy) and self._terminate_when_unhealthy
        info = {
            "x_position": float(self.data.qpos[0]),
            "y_position": float(self.data.qpos[1]),
            "x_velocity": float(x_velocity),
            **{k: float(v) for k, v in terms.items()},
        }
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), float(sum_terms(terms)), bool(terminated), False, info


class AntVelEnv(AntTaskEnv):
    """Ant goal velocity; task :class:`GoalVelocity`, v_goal ~ U[low, high].

    Default task: ``GoalVelocity((low + high) / 2)``.
    """

    def __init__(
        self, low: float = 0.0, high: float = 3.0, task: GoalVelocity | None = None, **kwargs: Any
    ):
        super().__init__(VelocityTaskSpace(low, high), _velocity_terms, task, **kwargs)
        EzPickle.__init__(self, low=low, high=high, task=task, **kwargs)


class AntDirEnv(AntTaskEnv):
    """Ant direction; task :class:`Direction` (+1 / -1). Default task: +1."""

    def __init__(self, task: Direction | None = None, **kwargs: Any):
        super().__init__(DirectionTaskSpace(), _direction_terms, task, **kwargs)
        EzPickle.__init__(self, task=task, **kwargs)


class AntGoalEnv(AntTaskEnv):
    """Ant goal position; task :class:`GoalPosition` ~ U[low, high]^2; observation includes
    the torso x, y. Default task: ``GoalPosition(high, high)``."""

    def __init__(
        self,
        low: float = -3.0,
        high: float = 3.0,
        task: GoalPosition | None = None,
        exclude_current_positions_from_observation: bool = False,
        **kwargs: Any,
    ):
        super().__init__(
            GoalPositionTaskSpace(low, high),
            _goal_terms,
            task,
            exclude_current_positions_from_observation=exclude_current_positions_from_observation,
            **kwargs,
        )
        EzPickle.__init__(
            self,
            low=low,
            high=high,
            task=task,
            exclude_current_positions_from_observation=exclude_current_positions_from_observation,
            **kwargs,
        )


class AntTaskVectorEnv(MujocoTaskVectorEnv):
    """N ants stepped in one ``mujoco.batch.Batch``; one task each; no autoreset.

    Semantics: :class:`maml_envs.task_family.TaskFamilyVectorEnv` and
    :class:`maml_envs.mujoco_vector.MujocoTaskVectorEnv`; termination as :class:`AntTaskEnv`.
    """

    def __init__(
        self,
        num_envs: int,
        task_space: TaskSpace[Any],
        task_terms: Callable[..., dict[str, Any]],
        task: Any = None,
        max_episode_steps: int | None = 200,
        num_threads: int | None = None,
        ctrl_cost_weight: float = CTRL_COST_WEIGHT,
        contact_cost_weight: float = CONTACT_COST_WEIGHT,
        healthy_reward: float = SURVIVE_REWARD,
        terminate_when_unhealthy: bool = True,
        healthy_z_range: tuple[float, float] = (0.2, 1.0),
        contact_force_range: tuple[float, float] = CONTACT_FORCE_RANGE,
        exclude_current_positions_from_observation: bool = True,
        frame_skip: int = 5,
        reset_noise_scale: float = 0.1,
        render_mode: str | None = None,
    ):
        model = ant_model(gymnasium_asset("ant.xml"))
        self._skip_qpos = 2 if exclude_current_positions_from_observation else 0
        super().__init__(
            num_envs,
            model,
            task_space,
            task,
            max_episode_steps,
            obs_dim=model.nq - self._skip_qpos + model.nv,
            frame_skip=frame_skip,
            reset_noise_scale=reset_noise_scale,
            num_threads=num_threads,
        )
        self.render_mode = render_mode
        self._task_terms = task_terms
        self.ctrl_cost_weight = float(ctrl_cost_weight)
        self.contact_cost_weight = float(contact_cost_weight)
        self.healthy_reward = float(healthy_reward)
        self.terminate_when_unhealthy = bool(terminate_when_unhealthy)
        self.healthy_z_range = tuple(healthy_z_range)
        self.contact_force_range = tuple(contact_force_range)

    def _observe(self) -> np.ndarray:
        return np.concatenate((self._qpos[:, self._skip_qpos :], self._qvel), axis=1)

    def _rewards(self, x_velocity: np.ndarray, actions: np.ndarray) -> dict[str, np.ndarray]:
        contact = contact_cost(
            self._sensordata,
            self.model.nbody,
            self.contact_cost_weight,
            self.contact_force_range,  # type: ignore[arg-type]
        )
        return ant_reward_terms(
            self._task_terms,
            x_velocity,
            self._qpos[:, :2],
            actions,
            self.task_params,
            contact,
            self.ctrl_cost_weight,
            self.healthy_reward,
        )

    def _terminated_now(self) -> np.ndarray:
        if not self.terminate_when_unhealthy:
            return np.zeros(self.num_envs, dtype=bool)
        low, high = self.healthy_z_range
        z = self._qpos[:, 2]
        finite = np.isfinite(self._qpos).all(axis=1) & np.isfinite(self._qvel).all(axis=1)
        return ~(finite & (low <= z) & (z <= high))


class AntVelVectorEnv(AntTaskVectorEnv):
    """Batched :class:`AntVelEnv`; extra args ``num_envs``, ``num_threads``."""

    def __init__(
        self,
        num_envs: int,
        low: float = 0.0,
        high: float = 3.0,
        task: GoalVelocity | None = None,
        **kwargs: Any,
    ):
        super().__init__(num_envs, VelocityTaskSpace(low, high), _velocity_terms, task, **kwargs)


class AntDirVectorEnv(AntTaskVectorEnv):
    """Batched :class:`AntDirEnv`; extra args ``num_envs``, ``num_threads``."""

    def __init__(self, num_envs: int, task: Direction | None = None, **kwargs: Any):
        super().__init__(num_envs, DirectionTaskSpace(), _direction_terms, task, **kwargs)


class AntGoalVectorEnv(AntTaskVectorEnv):
    """Batched :class:`AntGoalEnv` (observation includes the torso x, y)."""

    def __init__(
        self,
        num_envs: int,
        low: float = -3.0,
        high: float = 3.0,
        task: GoalPosition | None = None,
        exclude_current_positions_from_observation: bool = False,
        **kwargs: Any,
    ):
        super().__init__(
            num_envs,
            GoalPositionTaskSpace(low, high),
            _goal_terms,
            task,
            exclude_current_positions_from_observation=exclude_current_positions_from_observation,
            **kwargs,
        )
