"""Half-cheetah goal-velocity and direction tasks (Finn et al. 2017, section 5.3).

Model and dynamics are Gymnasium's ``HalfCheetah-v5`` unchanged (the single envs subclass
``gymnasium.envs.mujoco.half_cheetah_v5.HalfCheetahEnv``); only the reward changes, as in
cbfinn/maml_rl ``half_cheetah_env_rand.py`` / ``half_cheetah_env_rand_direc.py``:

* velocity (``HalfCheetahVel``): ``r = -|v - v_goal| - 0.05 * ||a||^2``, v_goal ~ U[low, high]
  (paper: [0, 2]);
* direction (``HalfCheetahDir``): ``r = d * v - 0.05 * ||a||^2``, d in {-1, +1};

with ``v = (x_after - x_before) / dt`` the forward velocity HalfCheetah-v5 computes from
``qpos[0]``. ``info`` holds ``reward_forward`` (task term) and ``reward_ctrl`` (their sum is the
reward), ``x_position`` and ``x_velocity``. No termination; truncation at 200 steps.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import mujoco
import numpy as np
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
from gymnasium.utils import EzPickle

from maml_envs.mujoco_vector import MujocoTaskVectorEnv, gymnasium_asset
from maml_envs.rewards import control_cost, direction_term, goal_velocity_term, sum_terms
from maml_envs.task_family import TaskFamilyEnv, TaskSpace, check_actions
from maml_envs.tasks import Direction, DirectionTaskSpace, GoalVelocity, VelocityTaskSpace

TaskTerm = Callable[[np.ndarray, np.ndarray], np.ndarray]

DEFAULT_CTRL_COST_WEIGHT = 0.05


def cheetah_reward_terms(
    task_term: TaskTerm,
    x_velocity: Any,
    action: np.ndarray,
    params: np.ndarray,
    ctrl_cost_weight: float,
) -> dict[str, np.ndarray]:
    """``{"reward_forward": task_term(v, params), "reward_ctrl": -w * ||a||^2}``."""
    return {
        "reward_forward": task_term(x_velocity, params),
        "reward_ctrl": -control_cost(action, ctrl_cost_weight),
    }


@contextmanager
def _quiet_settotalmass() -> Iterator[None]:
    """Drop MuJoCo 4's deprecation warning for ``settotalmass``, which Gymnasium's
    half_cheetah.xml uses: without this every model compile prints it and writes
    MUJOCO_LOG.TXT into the working directory. The compiled model is the same; any other
    warning is passed on."""
    previous = mujoco.get_mju_user_warning()

    def handler(message: str) -> None:
        if "settotalmass" in message:
            return
        if previous is not None:
            previous(message)
        else:
            print(f"WARNING: {message}", file=sys.stderr)

    mujoco.set_mju_user_warning(handler)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


class HalfCheetahTaskEnv(TaskFamilyEnv, HalfCheetahEnv):
    """HalfCheetah-v5 with a task-dependent forward term; base of the cheetah families.

    Args:
        task_space: the task distribution.
        task_term: ``f(v, task_params)``, the task's forward reward term.
        task: initial task (default ``task_space.default``).
        ctrl_cost_weight: weight of ``||a||^2`` (paper: 0.05).
        **kwargs: other ``HalfCheetahEnv`` arguments (``frame_skip``, ``reset_noise_scale``, ...).
    """

    def __init__(
        self,
        task_space: TaskSpace[Any],
        task_term: TaskTerm,
        task: Any = None,
        ctrl_cost_weight: float = DEFAULT_CTRL_COST_WEIGHT,
        **kwargs: Any,
    ):
        with _quiet_settotalmass():
            HalfCheetahEnv.__init__(self, ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        self._task_term = task_term
        self._init_task_family(task_space, task)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        return super().step(check_actions(action, self.action_space.shape))

    def _get_rew(self, x_velocity: float, action: np.ndarray) -> tuple[float, dict[str, Any]]:
        terms = cheetah_reward_terms(
            self._task_term, x_velocity, action, self.task_params, self._ctrl_cost_weight
        )
        info = {k: float(v) for k, v in terms.items()}
        return float(sum_terms(terms)), info


class HalfCheetahVelEnv(HalfCheetahTaskEnv):
    """Half-cheetah goal velocity; task :class:`GoalVelocity`, v_goal ~ U[low, high].

    Default task: ``GoalVelocity((low + high) / 2)``.
    """

    def __init__(
        self, low: float = 0.0, high: float = 2.0, task: GoalVelocity | None = None, **kwargs: Any
    ):
        super().__init__(VelocityTaskSpace(low, high), goal_velocity_term, task, **kwargs)
        EzPickle.__init__(self, low=low, high=high, task=task, **kwargs)


class HalfCheetahDirEnv(HalfCheetahTaskEnv):
    """Half-cheetah direction; task :class:`Direction` (+1 / -1). Default task: +1."""

    def __init__(self, task: Direction | None = None, **kwargs: Any):
        super().__init__(DirectionTaskSpace(), direction_term, task, **kwargs)
        EzPickle.__init__(self, task=task, **kwargs)


def half_cheetah_model() -> mujoco.MjModel:
    """The model HalfCheetah-v5 loads (Gymnasium's ``half_cheetah.xml``)."""
    with _quiet_settotalmass():
        return mujoco.MjModel.from_xml_path(gymnasium_asset("half_cheetah.xml"))


class HalfCheetahTaskVectorEnv(MujocoTaskVectorEnv):
    """N half-cheetahs stepped in one ``mujoco.batch.Batch``; one task each; no autoreset.

    Semantics: :class:`maml_envs.task_family.TaskFamilyVectorEnv` and
    :class:`maml_envs.mujoco_vector.MujocoTaskVectorEnv`. Observation: ``qpos[1:]`` and ``qvel``
    (float64, 17 per sub-env), as HalfCheetah-v5.
    """

    def __init__(
        self,
        num_envs: int,
        task_space: TaskSpace[Any],
        task_term: TaskTerm,
        task: Any = None,
        max_episode_steps: int | None = 200,
        num_threads: int | None = None,
        ctrl_cost_weight: float = DEFAULT_CTRL_COST_WEIGHT,
        frame_skip: int = 5,
        reset_noise_scale: float = 0.1,
        render_mode: str | None = None,
    ):
        model = half_cheetah_model()
        super().__init__(
            num_envs,
            model,
            task_space,
            task,
            max_episode_steps,
            obs_dim=model.nq - 1 + model.nv,
            frame_skip=frame_skip,
            reset_noise_scale=reset_noise_scale,
            num_threads=num_threads,
        )
        self.render_mode = render_mode
        self.ctrl_cost_weight = float(ctrl_cost_weight)
        self._task_term = task_term

    def _observe(self) -> np.ndarray:
        return np.concatenate((self._qpos[:, 1:], self._qvel), axis=1)

    def _rewards(self, x_velocity: np.ndarray, actions: np.ndarray) -> dict[str, np.ndarray]:
        return cheetah_reward_terms(
            self._task_term, x_velocity, actions, self.task_params, self.ctrl_cost_weight
        )


class HalfCheetahVelVectorEnv(HalfCheetahTaskVectorEnv):
    """Batched :class:`HalfCheetahVelEnv`; extra args ``num_envs``, ``num_threads``."""

    def __init__(
        self,
        num_envs: int,
        low: float = 0.0,
        high: float = 2.0,
        task: GoalVelocity | None = None,
        **kwargs: Any,
    ):
        super().__init__(num_envs, VelocityTaskSpace(low, high), goal_velocity_term, task, **kwargs)


class HalfCheetahDirVectorEnv(HalfCheetahTaskVectorEnv):
    """Batched :class:`HalfCheetahDirEnv`; extra args ``num_envs``, ``num_threads``."""

    def __init__(self, num_envs: int, task: Direction | None = None, **kwargs: Any):
        super().__init__(num_envs, DirectionTaskSpace(), direction_term, task, **kwargs)
