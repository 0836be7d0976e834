"""K-armed Bernoulli bandits (RL^2: Duan et al. 2016; tristandeleu/pytorch-maml-rl ``bandit.py``).

A task is a vector of K arm probabilities p_1..p_K, i.i.d. uniform in [0, 1). An episode is a
single pull: the action (``Discrete(K)``) picks arm a, the reward is 1 with probability p_a and
0 otherwise, and the episode terminates. The observation is a constant ``[0.0]`` (float32,
shape (1,)), as in the port (whose space is ``Box(0, 0)``; here ``Box(0, 1)``, as Gymnasium's
checker warns about a Box whose bounds are equal): a memoryless policy learns the arm
preferences in its weights, and
the K episodes a MAML inner step samples per task play the role of RL^2's n pulls per trial
(n in {10, 100, 500}). Registered horizon: 1 step.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import batch_space

from maml_envs.task_family import TaskFamilyEnv, TaskFamilyVectorEnv, check_discrete_actions
from maml_envs.tasks import BernoulliArms, BernoulliBanditTaskSpace


def bernoulli_pull(
    probabilities: np.ndarray, actions: np.ndarray, uniforms: np.ndarray
) -> np.ndarray:
    """Reward of pulling arm ``a``: ``1.0 if u < p_a else 0.0`` with ``u`` uniform in [0, 1).

    Works on (K,) probabilities with a scalar action and uniform, or on (N, K), (N,), (N,).
    """
    p = np.take_along_axis(probabilities, np.asarray(actions)[..., None], axis=-1)[..., 0]
    return (uniforms < p).astype(np.float64)


def _uniform(rng: np.random.Generator, size: tuple[int, ...]) -> np.ndarray:
    return rng.random(size)


def _spaces(k: int) -> tuple[spaces.Box, spaces.Discrete]:
    observation_space = spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
    return observation_space, spaces.Discrete(k)


class BernoulliBanditEnv(TaskFamilyEnv, gym.Env):
    """One pull of a K-armed Bernoulli bandit; task :class:`maml_envs.tasks.BernoulliArms`.

    Args:
        k: number of arms K (registered: 5, 10, 50, as the port).
        task: initial task; default every arm 0.5.

    ``info["reward_pull"]`` is the only reward term. The reward's coin is
    ``self.np_random.random()``, one draw per step.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(self, k: int = 5, task: BernoulliArms | None = None):
        task_space = BernoulliBanditTaskSpace(k)
        self.k = task_space.k
        self.observation_space, self.action_space = _spaces(self.k)
        self._init_task_family(task_space, task)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed, options=options)
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        arm = check_discrete_actions(action, (), self.k)
        reward = float(bernoulli_pull(self.task_params, arm, _uniform(self.np_random, ())))
        return np.zeros(1, dtype=np.float32), reward, True, False, {"reward_pull": reward}


class BernoulliBanditVectorEnv(TaskFamilyVectorEnv):
    """N bandit sub-envs (one pull each per episode) stepped with numpy, one task each.

    See :class:`maml_envs.task_family.TaskFamilyVectorEnv` for the reset/step semantics.
    Actions: an (N,) integer array (``MultiDiscrete([K] * N)``). With ``reset(seed=[s_0, ...])``
    sub-env i draws its coin from its own generator, so its rewards equal those of a single env
    reset with ``seed=s_i`` and given the same actions.

    Args:
        num_envs: number of sub-envs N.
        k, task: as :class:`BernoulliBanditEnv`.
        max_episode_steps: horizon (passed by ``gymnasium.make_vec`` from the registration).
        num_threads: accepted for a uniform API with the MuJoCo families; unused (numpy only).
    """

    def __init__(
        self,
        num_envs: int,
        k: int = 5,
        task: BernoulliArms | None = None,
        max_episode_steps: int | None = 1,
        num_threads: int | None = None,
        render_mode: str | None = None,
    ):
        task_space = BernoulliBanditTaskSpace(k)
        self.k = task_space.k
        self.single_observation_space, self.single_action_space = _spaces(self.k)
        self._init_task_family(num_envs, task_space, max_episode_steps, task)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.render_mode = render_mode

    def _check_actions(self, actions: Any) -> np.ndarray:
        return check_discrete_actions(actions, (self.num_envs,), self.k)

    def _reset_all(self) -> np.ndarray:
        return np.zeros((self.num_envs, 1), dtype=np.float32)

    def _step_active(
        self, actions: np.ndarray, active: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        reward = bernoulli_pull(self.task_params, actions, self._draw_active(_uniform, active))
        return (
            np.zeros((self.num_envs, 1), dtype=np.float32),
            reward,
            np.ones(self.num_envs, dtype=bool),
            {"reward_pull": reward.copy()},
        )
