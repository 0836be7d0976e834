"""The authors' exact locomotion tasks: rllab's half-cheetah and ant, as in cbfinn/maml_rl.

Finn, Abbeel, Levine (ICML 2017) ran rllab's MuJoCo envs (``half_cheetah_env_rand.py``,
``half_cheetah_env_rand_direc.py``, ``ant_env_rand.py``, ``ant_env_rand_direc.py``,
``ant_env_rand_goal.py`` on rllab's ``MujocoEnv``), which differ from Gymnasium's v5 tasks in
more than the reward. These variants rebuild them on Gymnasium's model files with
``mujoco.MjSpec`` edits:

* **Frame skip 1**: one env step is one ``mj_step`` (rllab's default: neither model file sets
  ``frame_skip``). Half-cheetah: timestep 0.01 s, a 200-step episode is 2 s of motion. Ant:
  rllab's model steps RK4 at **0.02 s** (Gymnasium: 0.01), motors with gear 1 and
  ``ctrlrange`` [-150, 150] (Gymnasium: gear 150, [-1, 1]), contact ``solref`` (0.02, 1) and
  ``solimp`` (0.8, 0.8, 0.01) on every geom, initial pose
  ``qpos = (0, 0, 0.55, 1, 0, 0, 0, 0, 1, 0, -1, 0, -1, 0, 1)`` (legs bent, torso at 0.55).
* **After each step rllab calls ``model.forward()``**: observations, velocity and contact forces
  describe the new state. Here the batched env asks ``mujoco.batch`` for the stages at the new
  state (``mjSTAGE_VEL`` for the cheetah, ``mjSTAGE_ACC`` = ``mj_forward`` for the ant, whose
  contact forces need it) and the single env calls ``mj_forward``; the next step's physics is
  unchanged by it.
* **Velocity** ``v = subtree_linvel[torso][0]``: the x-velocity of the whole robot's centre of
  mass (rllab's ``get_body_comvel("torso")``, the mass-weighted velocity of the bodies' centres
  of mass), computed by ``mj_subtreeVel`` (a ``subtreelinvel`` sensor makes ``mj_forward`` run
  it). Not the root joint's x change.
* **Observations** (float64): half-cheetah (20) ``qpos[1:]``, ``qvel``, ``subtree_com[torso]``
  (x included); ant (125) ``qpos`` (15), ``qvel`` (14), ``clip(cfrc_ext, -1, 1)`` of all 14
  bodies (84, world first), the torso's ``xmat`` (9), ``subtree_com[torso]`` (3). ``cfrc_ext``
  comes from ``mj_rnePostConstraint``, which ``mj_forward`` runs because the ant model gets an
  accelerometer on the torso (MuJoCo computes ``cfrc_ext`` only for such sensors).
* **Reset**: ``qpos = init_qpos + 0.01 N(0, 1)``, ``qvel = 0.1 N(0, 1)`` per coordinate (qpos
  drawn first), then ``mj_forward``.
* **Rewards** (``a`` = the action in actuator units, i.e. after the ``normalize`` mapping):
  cheetah velocity ``-|v - v_goal| - 0.05 ||a||^2``; direction ``d v - 0.05 ||a||^2``;
  ant velocity ``(-|v - v_goal| + 1) - 0.005 ||a / 150||^2 - 0.0005 ||clip(cfrc_ext)||^2 + 0.05``;
  ant direction ``d v - ctrl - contact + 0.05``; ant goal
  ``(-||com_xy - goal||_1 + 4) - ctrl - contact + 0.05`` with ``com_xy = subtree_com[torso][:2]``.
  Ant episodes terminate when the state is not finite or ``qpos[2]`` leaves [0.2, 1.0].

Task distributions as rllab's ``sample_goals``: cheetah velocity U[0, 2]; ant velocity U[0, 3];
ant goal U[-3, 3]^2; directions +1 / -1 with probability 1/2 (rllab draws a number and thresholds
it, which is the same distribution).

``info`` holds the reward terms (summing to the reward), ``x_position`` (``qpos[0]``) and
``x_velocity`` (the centre-of-mass velocity above). Not bit-equal to rllab (MuJoCo 1.31 and 4.x
differ in the solver and contact model); equal in every definition above.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import mujoco
import numpy as np
from gymnasium import spaces
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
from gymnasium.utils import EzPickle

from maml_envs.ant import _direction_terms, _goal_terms, _velocity_terms, ant_reward_terms
from maml_envs.half_cheetah import _quiet_settotalmass, cheetah_reward_terms
from maml_envs.mujoco_vector import MujocoTaskVectorEnv, gymnasium_asset
from maml_envs.rewards import direction_term, goal_velocity_term, sum_terms
from maml_envs.task_family import TaskFamilyEnv, TaskSpace, check_actions
from maml_envs.tasks import (
    Direction,
    DirectionTaskSpace,
    GoalPosition,
    GoalPositionTaskSpace,
    GoalVelocity,
    VelocityTaskSpace,
)

RESET_QPOS_STD = 0.01
RESET_QVEL_STD = 0.1
TORSO = 1
"""Body id of the torso (the robot's root body) in both models."""
CHEETAH_CTRL_COST_WEIGHT = 0.05
ANT_CTRL_COST_WEIGHT = 0.005
ANT_CONTACT_COST_WEIGHT = 5e-4
ANT_SURVIVE_REWARD = 0.05
ANT_TIMESTEP = 0.02
ANT_CTRL_LIMIT = 150.0
ANT_INIT_QPOS = np.array([0.0, 0.0, 0.55, 1.0, 0, 0, 0, 0, 1.0, 0, -1.0, 0, -1.0, 0, 1.0])
ANT_SOLREF = (0.02, 1.0)
ANT_SOLIMP = (0.8, 0.8, 0.01, 0.5, 2.0)  # rllab's three numbers, MuJoCo's default shape
ANT_HEALTHY_Z = (0.2, 1.0)


def _add_com_velocity_sensor(spec: mujoco.MjSpec) -> None:
    """A ``subtreelinvel`` sensor on the torso, so that ``mj_forward`` runs ``mj_subtreeVel``."""
    spec.add_sensor(
        name="_maml_torso_subtreelinvel",
        type=mujoco.mjtSensor.mjSENS_SUBTREELINVEL,
        objtype=mujoco.mjtObj.mjOBJ_BODY,
        objname=spec.bodies[TORSO].name,
    )


def rllab_half_cheetah_model() -> mujoco.MjModel:
    """Gymnasium's ``half_cheetah.xml`` (the same model as rllab's) with a torso
    ``subtreelinvel`` sensor."""
    with _quiet_settotalmass(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*settotalmass", category=UserWarning)
        spec = mujoco.MjSpec.from_file(gymnasium_asset("half_cheetah.xml"))
        _add_com_velocity_sensor(spec)
        return spec.compile()


def rllab_ant_model() -> mujoco.MjModel:
    """rllab's ant from Gymnasium's ``ant.xml``: timestep 0.02 (RK4), gear 1 and ctrlrange
    [-150, 150], solref/solimp of rllab's geom default, ``init_qpos`` as ``qpos0``; plus a
    torso ``subtreelinvel`` sensor and a torso accelerometer (makes ``mj_forward`` compute
    ``cfrc_ext``)."""
    spec = mujoco.MjSpec.from_file(gymnasium_asset("ant.xml"))
    spec.option.timestep = ANT_TIMESTEP
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_RK4
    for actuator in spec.actuators:
        actuator.gear = [1.0, 0, 0, 0, 0, 0]
        actuator.ctrlrange = [-ANT_CTRL_LIMIT, ANT_CTRL_LIMIT]
    for geom in spec.geoms:
        geom.solref = list(ANT_SOLREF)
        geom.solimp = list(ANT_SOLIMP)
    torso = spec.bodies[TORSO]
    site = torso.add_site(name="_maml_torso_site")
    _add_com_velocity_sensor(spec)
    spec.add_sensor(
        name="_maml_torso_accelerometer",
        type=mujoco.mjtSensor.mjSENS_ACCELEROMETER,
        objtype=mujoco.mjtObj.mjOBJ_SITE,
        objname=site.name,
    )
    model = spec.compile()
    model.qpos0[:] = ANT_INIT_QPOS
    return model


# --- observations, velocity, rewards and termination from (N, ...) MjData fields ------------
class Fields:
    """The MjData fields ``names`` a robot's observations, rewards and terminations read
    (:attr:`RllabTask.fields`), each with a leading sub-env axis (N, ...), taken from ``source``
    once, when made: a batch's derived fields must be bound before its first call (a field
    bound later reads zero until the next call), and each bound field is copied out after every
    call, so only these are; another name is an error."""

    def __init__(self, source: Callable[[str], np.ndarray], names: tuple[str, ...]):
        self._arrays = {name: source(name) for name in names}

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self._arrays[name]
        except KeyError:
            raise AttributeError(
                f"{name!r} is not one of the fields {tuple(self._arrays)}"
            ) from None


def com_velocity(fields: Any) -> np.ndarray:
    """(N,) x-velocity of the robot's centre of mass: ``subtree_linvel[:, torso, 0]``."""
    return fields.subtree_linvel[:, TORSO, 0].copy()


def cheetah_observation(fields: Any) -> np.ndarray:
    """(N, 20): ``qpos[1:]``, ``qvel``, ``subtree_com[torso]``."""
    return np.concatenate((fields.qpos[:, 1:], fields.qvel, fields.subtree_com[:, TORSO]), axis=1)


def clipped_contact_forces(fields: Any) -> np.ndarray:
    """(N, nbody * 6) ``clip(cfrc_ext, -1, 1)`` of every body, world first."""
    cfrc = fields.cfrc_ext
    return np.clip(cfrc, -1.0, 1.0).reshape(cfrc.shape[0], -1)


def ant_observation(fields: Any) -> np.ndarray:
    """(N, 125): ``qpos``, ``qvel``, ``clip(cfrc_ext, -1, 1)``, torso ``xmat``,
    ``subtree_com[torso]``."""
    return np.concatenate(
        (
            fields.qpos,
            fields.qvel,
            clipped_contact_forces(fields),
            fields.xmat[:, TORSO],
            fields.subtree_com[:, TORSO],
        ),
        axis=1,
    )


def ant_terminated(qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
    """(N,) bool: state not finite or torso height ``qpos[2]`` outside [0.2, 1.0]."""
    low, high = ANT_HEALTHY_Z
    finite = np.isfinite(qpos).all(axis=1) & np.isfinite(qvel).all(axis=1)
    z = qpos[:, 2]
    return ~(finite & (low <= z) & (z <= high))


class RllabTask:
    """What distinguishes one rllab family: robot (model, observation, termination) and task
    reward terms. Subclasses below are the five families."""

    xml: ClassVar[str]
    """Gymnasium's model file the robot is built from (also the path ``MujocoEnv`` checks)."""
    model_fn: ClassVar[Callable[[], mujoco.MjModel]]
    observe: ClassVar[Callable[[Any], np.ndarray]]
    obs_dim: ClassVar[int]
    fields: ClassVar[tuple[str, ...]]
    """The MjData fields its observations, rewards and terminations read."""
    step_stage: ClassVar[int]
    """The ``mjtStage`` the batched env computes at the new state (rllab's ``model.forward()``)."""
    persistent_batch: ClassVar[bool]
    """Whether the batched env keeps one ``MjData`` per sub-env. Bit-identical either way;
    measured on 2 cores, 800 sub-envs (``tests/test_envs_rllab.py`` checks the equality): the
    cheetah's persistent batch skips re-running the position and velocity stages at the start
    of the next step (3.3-4.0 against 4.4 us per sub-env step), while the ant's 800 persistent
    ``MjData`` (14.7 MB of arena each for its contacts) miss the caches more than the skipped
    stages save: 26.8 against 23.4 us, so the ant's batch loads each sub-env's state into one
    ``MjData`` per thread."""


class _Cheetah(RllabTask):
    xml = "half_cheetah.xml"
    model_fn = staticmethod(rllab_half_cheetah_model)
    observe = staticmethod(cheetah_observation)
    obs_dim = 20
    fields = ("qpos", "qvel", "subtree_com", "subtree_linvel")
    step_stage = mujoco.mjtStage.mjSTAGE_VEL.value
    persistent_batch = True

    def __init__(self, task_term: Callable[[np.ndarray, np.ndarray], np.ndarray]):
        self.task_term = task_term

    def reward_terms(
        self, fields: Any, velocity: np.ndarray, actions: np.ndarray, params: np.ndarray
    ) -> dict[str, np.ndarray]:
        return cheetah_reward_terms(
            self.task_term, velocity, actions, params, CHEETAH_CTRL_COST_WEIGHT
        )

    def terminated(self, fields: Any) -> np.ndarray:
        return np.zeros(fields.qpos.shape[0], dtype=bool)


class _Ant(RllabTask):
    xml = "ant.xml"
    model_fn = staticmethod(rllab_ant_model)
    observe = staticmethod(ant_observation)
    obs_dim = 125
    fields = ("qpos", "qvel", "xmat", "subtree_com", "subtree_linvel", "cfrc_ext")
    step_stage = mujoco.mjtStage.mjSTAGE_ACC.value
    persistent_batch = False

    def __init__(self, task_terms: Callable[..., dict[str, Any]]):
        self.task_terms = task_terms

    def reward_terms(
        self, fields: Any, velocity: np.ndarray, actions: np.ndarray, params: np.ndarray
    ) -> dict[str, np.ndarray]:
        contact = ANT_CONTACT_COST_WEIGHT * np.sum(
            np.square(clipped_contact_forces(fields)), axis=1
        )
        return ant_reward_terms(
            self.task_terms,
            velocity,
            fields.subtree_com[:, TORSO, :2],
            actions / ANT_CTRL_LIMIT,
            params,
            contact,
            ANT_CTRL_COST_WEIGHT,
            ANT_SURVIVE_REWARD,
        )

    def terminated(self, fields: Any) -> np.ndarray:
        return ant_terminated(fields.qpos, fields.qvel)


# --- single env -----------------------------------------------------------------------------
class RllabLocomotionEnv(TaskFamilyEnv, MujocoEnv):
    """One rllab-exact locomotion env (Gymnasium ``MujocoEnv`` for rendering); see the module
    docstring for the dynamics, observation and rewards.

    Args:
        family: the robot and task rewards (:class:`RllabTask`).
        task_space: the task distribution.
        task: initial task (default ``task_space.default``).
        render_mode, width, height: as Gymnasium's MuJoCo envs.
    """

    metadata: ClassVar[dict[str, Any]] = {
        "render_modes": ["human", "rgb_array", "depth_array", "rgbd_tuple"]
    }

    def __init__(
        self,
        family: RllabTask,
        task_space: TaskSpace[Any],
        task: Any = None,
        render_mode: str | None = None,
        width: int = 480,
        height: int = 480,
    ):
        self._family = family
        obs_space = spaces.Box(-np.inf, np.inf, (family.obs_dim,), np.float64)
        MujocoEnv.__init__(
            self,
            gymnasium_asset(family.xml),
            frame_skip=1,
            observation_space=obs_space,
            render_mode=render_mode,
            width=width,
            height=height,
        )
        # one frame per physics step (set after the model exists; MujocoEnv checks it if present)
        self.metadata = {**self.metadata, "render_fps": round(1.0 / self.dt)}
        self._init_task_family(task_space, task)

    def _initialize_simulation(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        model = self._family.model_fn()
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        return model, mujoco.MjData(model)  # MjData starts at qpos0 (the ant's rllab pose)

    def _fields(self) -> Fields:
        return Fields(lambda name: getattr(self.data, name)[None], self._family.fields)

    def _get_obs(self) -> np.ndarray:
        return self._family.observe(self._fields())[0]

    def reset_model(self) -> np.ndarray:
        qpos = self.model.qpos0 + RESET_QPOS_STD * self.np_random.standard_normal(self.model.nq)
        qvel = RESET_QVEL_STD * self.np_random.standard_normal(self.model.nv)
        self.set_state(qpos, qvel)
        return self._get_obs()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = check_actions(action, self.action_space.shape)
        self.data.ctrl[:] = action
        mujoco.mj_step(self.model, self.data)
        mujoco.mj_forward(self.model, self.data)  # rllab's model.forward() after the step
        fields = self._fields()
        velocity = com_velocity(fields)
        terms = self._family.reward_terms(fields, velocity, action[None], self.task_params[None])
        info = {
            "x_position": float(self.data.qpos[0]),
            "x_velocity": float(velocity[0]),
            **{k: float(v[0]) for k, v in terms.items()},
        }
        if self.render_mode == "human":
            self.render()
        terminated = bool(self._family.terminated(fields)[0])
        return self._get_obs(), float(sum_terms(terms)[0]), terminated, False, info


class RllabLocomotionVectorEnv(MujocoTaskVectorEnv):
    """N rllab-exact locomotion envs in one ``mujoco.batch.Batch``; semantics of
    :class:`maml_envs.mujoco_vector.MujocoTaskVectorEnv`, dynamics of :class:`RllabLocomotionEnv`
    (bit-identical to it)."""

    def __init__(
        self,
        num_envs: int,
        family: RllabTask,
        task_space: TaskSpace[Any],
        task: Any = None,
        max_episode_steps: int | None = 200,
        num_threads: int | None = None,
        render_mode: str | None = None,
    ):
        model = family.model_fn()
        super().__init__(
            num_envs,
            model,
            task_space,
            task,
            max_episode_steps,
            obs_dim=family.obs_dim,
            frame_skip=1,
            num_threads=num_threads,
            step_stage=family.step_stage,
            persistent=family.persistent_batch,
        )
        self.render_mode = render_mode
        self._family = family
        self._fields = Fields(self.batch.bind, family.fields)

    def _sample_initial_state(self) -> tuple[np.ndarray, np.ndarray]:
        nq, nv = self.model.nq, self.model.nv
        qpos = self._init_qpos + RESET_QPOS_STD * self._draw_per_env(
            lambda rng, size: rng.standard_normal(size), (nq,)
        )
        qvel = RESET_QVEL_STD * self._draw_per_env(
            lambda rng, size: rng.standard_normal(size), (nv,)
        )
        return qpos, qvel

    def _forward_velocity(self, x_before: np.ndarray) -> np.ndarray:
        return com_velocity(self._fields)

    def _observe(self) -> np.ndarray:
        return self._family.observe(self._fields)

    def _rewards(self, x_velocity: np.ndarray, actions: np.ndarray) -> dict[str, np.ndarray]:
        return self._family.reward_terms(self._fields, x_velocity, actions, self.task_params)

    def _terminated_now(self) -> np.ndarray:
        return self._family.terminated(self._fields)


# --- the five families ------------------------------------------------------------------------
def _cheetah_vel(low: float, high: float) -> tuple[RllabTask, TaskSpace[Any]]:
    return _Cheetah(goal_velocity_term), VelocityTaskSpace(low, high)


def _cheetah_dir() -> tuple[RllabTask, TaskSpace[Any]]:
    return _Cheetah(direction_term), DirectionTaskSpace()


def _ant_vel(low: float, high: float) -> tuple[RllabTask, TaskSpace[Any]]:
    return _Ant(_velocity_terms), VelocityTaskSpace(low, high)


def _ant_dir() -> tuple[RllabTask, TaskSpace[Any]]:
    return _Ant(_direction_terms), DirectionTaskSpace()


def _ant_goal(low: float, high: float) -> tuple[RllabTask, TaskSpace[Any]]:
    return _Ant(_goal_terms), GoalPositionTaskSpace(low, high)


class HalfCheetahVelRllabEnv(RllabLocomotionEnv):
    """rllab half-cheetah goal velocity (``half_cheetah_env_rand.py``); v_goal ~ U[low, high]."""

    def __init__(
        self, low: float = 0.0, high: float = 2.0, task: GoalVelocity | None = None, **kwargs: Any
    ):
        super().__init__(*_cheetah_vel(low, high), task, **kwargs)
        EzPickle.__init__(self, low=low, high=high, task=task, **kwargs)


class HalfCheetahDirRllabEnv(RllabLocomotionEnv):
    """rllab half-cheetah direction (``half_cheetah_env_rand_direc.py``); d in {-1, +1}."""

    def __init__(self, task: Direction | None = None, **kwargs: Any):
        super().__init__(*_cheetah_dir(), task, **kwargs)
        EzPickle.__init__(self, task=task, **kwargs)


class AntVelRllabEnv(RllabLocomotionEnv):
    """rllab ant goal velocity (``ant_env_rand.py``); v_goal ~ U[low, high]."""

    def __init__(
        self, low: float = 0.0, high: float = 3.0, task: GoalVelocity | None = None, **kwargs: Any
    ):
        super().__init__(*_ant_vel(low, high), task, **kwargs)
        EzPickle.__init__(self, low=low, high=high, task=task, **kwargs)


class AntDirRllabEnv(RllabLocomotionEnv):
    """rllab ant direction (``ant_env_rand_direc.py``); d in {-1, +1}."""

    def __init__(self, task: Direction | None = None, **kwargs: Any):
        super().__init__(*_ant_dir(), task, **kwargs)
        EzPickle.__init__(self, task=task, **kwargs)


class AntGoalRllabEnv(RllabLocomotionEnv):
    """rllab ant goal position (``ant_env_rand_goal.py``); goal ~ U[low, high]^2."""

    def __init__(
        self, low: float = -3.0, high: float = 3.0, task: GoalPosition | None = None, **kwargs: Any
    ):
        super().__init__(*_ant_goal(low, high), task, **kwargs)
        EzPickle.__init__(self, low=low, high=high, task=task, **kwargs)


class HalfCheetahVelRllabVectorEnv(RllabLocomotionVectorEnv):
    """Batched :class:`HalfCheetahVelRllabEnv`; extra args ``num_envs``, ``num_threads``."""

    def __init__(
        self,
        num_envs: int,
        low: float = 0.0,
        high: float = 2.0,
        task: GoalVelocity | None = None,
        **kwargs: Any,
    ):
        super().__init__(num_envs, *_cheetah_vel(low, high), task, **kwargs)


class HalfCheetahDirRllabVectorEnv(RllabLocomotionVectorEnv):
    """Batched :class:`HalfCheetahDirRllabEnv`."""

    def __init__(self, num_envs: int, task: Direction | None = None, **kwargs: Any):
        super().__init__(num_envs, *_cheetah_dir(), task, **kwargs)


class AntVelRllabVectorEnv(RllabLocomotionVectorEnv):
    """Batched :class:`AntVelRllabEnv`."""

    def __init__(
        self,
        num_envs: int,
        low: float = 0.0,
        high: float = 3.0,
        task: GoalVelocity | None = None,
        **kwargs: Any,
    ):
        super().__init__(num_envs, *_ant_vel(low, high), task, **kwargs)


class AntDirRllabVectorEnv(RllabLocomotionVectorEnv):
    """Batched :class:`AntDirRllabEnv`."""

    def __init__(self, num_envs: int, task: Direction | None = None, **kwargs: Any):
        super().__init__(num_envs, *_ant_dir(), task, **kwargs)


class AntGoalRllabVectorEnv(RllabLocomotionVectorEnv):
    """Batched :class:`AntGoalRllabEnv`."""

    def __init__(
        self,
        num_envs: int,
        low: float = -3.0,
        high: float = 3.0,
        task: GoalPosition | None = None,
        **kwargs: Any,
    ):
        super().__init__(num_envs, *_ant_goal(low, high), task, **kwargs)
