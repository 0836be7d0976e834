"""Random tabular MDPs (RL^2: Duan et al. 2016; tristandeleu/pytorch-maml-rl ``mdp.py``).

A task is an MDP with S states and A actions (registered: S = 10, A = 5): a mean reward
``m[s, a] ~ N(1, 1)`` and a transition distribution ``P[s, a, :] ~ Dirichlet(1, ..., 1)`` for
every (s, a). Every episode starts in state 0; the observation is the one-hot encoding of the
state (float32, shape (S,)). Taking action a in state s pays ``r = m[s, a] + z`` with
``z ~ N(0, 1)`` and moves to ``s' ~ P[s, a, :]``. The MDP never terminates; the registered
horizon is 10 steps (the port's registration).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import batch_space

from maml_envs.task_family import TaskFamilyEnv, TaskFamilyVectorEnv, check_discrete_actions
from maml_envs.tasks import TabularMDP, TabularMDPTaskSpace

INITIAL_STATE = 0


def sample_next_state(probabilities: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw from each row of ``probabilities`` (last axis) with ``u`` in [0, 1).

    With ``F(s) = (p_0 + ... + p_s) / (p_0 + ... + p_{S-1})`` (so ``F(S-1) = 1`` exactly), returns
    the first s with ``u < F(s)``, i.e. the number of s with ``F(s) <= u``; a state of
    probability 0 is never returned. Works on (S,) and a scalar, or (N, S) and (N,).
    """
    cdf = np.cumsum(probabilities, axis=-1)
    cdf = cdf / cdf[..., -1:]
    return np.sum(cdf <= np.asarray(uniforms)[..., None], axis=-1)


def tabular_mdp_step(
    states: np.ndarray,
    actions: np.ndarray,
    reward_means: np.ndarray,
    transitions: np.ndarray,
    normals: np.ndarray,
    uniforms: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step of N MDPs: returns next states, mean rewards m[s, a] and rewards m[s, a] + z.

    ``states``, ``actions`` (N,) ints; ``reward_means`` (N, S, A), ``transitions``
    (N, S, A, S); ``normals`` are the N(0, 1) reward noises z and ``uniforms`` the U[0, 1)
    draws of :func:`sample_next_state`. All results are (N,).
    """
    rows = np.arange(states.shape[0])
    means = reward_means[rows, states, actions]
    next_states = sample_next_state(transitions[rows, states, actions], uniforms)
    return next_states, means, means + normals


def _normal(rng: np.random.Generator, size: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(size)


def _uniform(rng: np.random.Generator, size: tuple[int, ...]) -> np.ndarray:
    return rng.random(size)


def _spaces(num_states: int, num_actions: int) -> tuple[spaces.Box, spaces.Discrete]:
    observation_space = spaces.Box(0.0, 1.0, shape=(num_states,), dtype=np.float32)
    return observation_space, spaces.Discrete(num_actions)


def _one_hot(states: np.ndarray, num_states: int) -> np.ndarray:
    return np.eye(num_states, dtype=np.float32)[states]


class TabularMDPEnv(TaskFamilyEnv, gym.Env):
    """A random tabular MDP; task :class:`maml_envs.tasks.TabularMDP`.

    Args:
        num_states: S (registered: 10, as RL^2 and the port).
        num_actions: A (registered: 5).
        task: initial task; default uniform transitions and mean rewards 0.

    Each step draws ``self.np_random.standard_normal()`` (reward noise) and then
    ``self.np_random.random()`` (next state). ``info``: ``reward_mean`` (m[s, a]) and
    ``reward_noise`` (z), which sum to the reward; ``state`` (the new state).
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(self, num_states: int = 10, num_actions: int = 5, task: TabularMDP | None = None):
        task_space = TabularMDPTaskSpace(num_states, num_actions)
        self.num_states, self.num_actions = task_space.num_states, task_space.num_actions
        self.observation_space, self.action_space = _spaces(self.num_states, self.num_actions)
        self._init_task_family(task_space, task)
        self._state = INITIAL_STATE

    def reset_task(self, task: TabularMDP) -> None:
        super().reset_task(task)
        self._reward_means = task.reward_table()[None]  # (1, S, A): one MDP of a batch
        self._transitions = task.transition_table()[None]

    @property
    def state(self) -> int:
        """The current state."""
        return self._state

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed, options=options)
        self._state = INITIAL_STATE
        return _one_hot(np.array(self._state), self.num_states), {"state": self._state}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = check_discrete_actions(action, (), self.num_actions)
        normal = _normal(self.np_random, ())
        uniform = _uniform(self.np_random, ())
        next_state, mean, reward = tabular_mdp_step(
            np.array([self._state]),
            action[None],
            self._reward_means,
            self._transitions,
            np.array([normal]),
            np.array([uniform]),
        )
        self._state = int(next_state[0])
        info = {"reward_mean": float(mean[0]), "reward_noise": float(normal), "state": self._state}
        obs = _one_hot(np.array(self._state), self.num_states)
        return obs, float(reward[0]), False, False, info


class TabularMDPVectorEnv(TaskFamilyVectorEnv):
    """N tabular-MDP sub-envs stepped with numpy, one task each; no autoreset.

    See :class:`maml_envs.task_family.TaskFamilyVectorEnv` for the reset/step semantics.
    Actions: an (N,) integer array (``MultiDiscrete([A] * N)``). With ``reset(seed=[s_0, ...])``
    sub-env i draws its reward noise and next state from its own generator, so its episode
    equals that of a single env reset with ``seed=s_i`` and given the same actions.

    Args:
        num_envs: number of sub-envs N.
        num_states, num_actions, task: as :class:`TabularMDPEnv`.
        max_episode_steps: horizon (passed by ``gymnasium.make_vec`` from the registration).
        num_threads: accepted for a uniform API with the MuJoCo families; unused (numpy only).
    """

    def __init__(
        self,
        num_envs: int,
        num_states: int = 10,
        num_actions: int = 5,
        task: TabularMDP | None = None,
        max_episode_steps: int | None = 10,
        num_threads: int | None = None,
        render_mode: str | None = None,
    ):
        task_space = TabularMDPTaskSpace(num_states, num_actions)
        self.num_states, self.num_actions = task_space.num_states, task_space.num_actions
        self.single_observation_space, self.single_action_space = _spaces(
            self.num_states, self.num_actions
        )
        self._init_task_family(num_envs, task_space, max_episode_steps, task)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.render_mode = render_mode
        self._states = np.full(self.num_envs, INITIAL_STATE, dtype=np.int64)

    def reset_tasks(self, tasks: Any) -> None:
        super().reset_tasks(tasks)
        s, a = self.num_states, self.num_actions
        self._reward_means = self._task_params[:, : s * a].reshape(-1, s, a)
        self._transitions = self._task_params[:, s * a :].reshape(-1, s, a, s)

    @property
    def states(self) -> np.ndarray:
        """(N,) int: the current state of each sub-env."""
        return self._states.copy()

    def _check_actions(self, actions: Any) -> np.ndarray:
        return check_discrete_actions(actions, (self.num_envs,), self.num_actions)

    def _reset_all(self) -> np.ndarray:
        self._states = np.full(self.num_envs, INITIAL_STATE, dtype=np.int64)
        return _one_hot(self._states, self.num_states)

    def _step_active(
        self, actions: np.ndarray, active: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        normals = self._draw_active(_normal, active)
        uniforms = self._draw_active(_uniform, active)
        next_states, means, rewards = tabular_mdp_step(
            self._states, actions, self._reward_means, self._transitions, normals, uniforms
        )
        self._states = np.where(active, next_states, self._states)
        info = {"reward_mean": means, "reward_noise": normals.copy()}
        return (
            _one_hot(self._states, self.num_states),
            rewards,
            np.zeros(self.num_envs, dtype=bool),
            info,
        )
