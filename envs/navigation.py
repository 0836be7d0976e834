"""2D navigation (Finn et al. 2017, section 5.3; cbfinn/maml_rl ``point_env_rand_goal.py``).

A point starts at (0, 0); the observation is its position (float32, shape (2,)); the action is
a velocity, clipped to [-0.1, 0.1]^2, added to the position. Reward after the move:
``r = -||pos - goal||_2``; the episode terminates when ``|dx| < 0.01 and |dy| < 0.01`` with
``(dx, dy) = pos - goal``, and is truncated at the horizon (100 steps when registered).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import batch_space

from maml_envs.task_family import TaskFamilyEnv, TaskFamilyVectorEnv, check_actions
from maml_envs.tasks import GoalPosition, GoalPositionTaskSpace

MAX_SPEED = 0.1
GOAL_TOLERANCE = 0.01


def navigation_move(
    position: np.ndarray, action: np.ndarray, goal: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One move: returns (new position, reward, terminated); works on (2,) or (N, 2) arrays."""
    position = position + np.clip(action, -MAX_SPEED, MAX_SPEED)
    delta = position - goal
    reward = -np.sqrt(np.sum(np.square(delta), axis=-1))
    terminated = np.all(np.abs(delta) < GOAL_TOLERANCE, axis=-1)
    return position, reward, terminated


def _spaces() -> tuple[spaces.Box, spaces.Box]:
    observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
    action_space = spaces.Box(-MAX_SPEED, MAX_SPEED, shape=(2,), dtype=np.float32)
    return observation_space, action_space


class Navigation2DEnv(TaskFamilyEnv, gym.Env):
    """2D point navigation to a goal; task :class:`maml_envs.tasks.GoalPosition`.

    Args:
        low, high: goals are drawn uniformly from [low, high]^2 (paper: -0.5, 0.5).
        task: initial task; default ``GoalPosition(high, high)``.

    ``info["reward_distance"]`` is the only reward term.
    """

    # trajectory_plot: observations are the 2D position, a task's as_array() its goal
    metadata: dict[str, Any] = {"render_modes": [], "trajectory_plot": True}  # noqa: RUF012

    def __init__(self, low: float = -0.5, high: float = 0.5, task: GoalPosition | None = None):
        self.observation_space, self.action_space = _spaces()
        self._init_task_family(GoalPositionTaskSpace(low, high), task)
        self._position = np.zeros(2, dtype=np.float64)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed, options=options)
        self._position = np.zeros(2, dtype=np.float64)
        return self._position.astype(np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = check_actions(action, (2,))
        self._position, reward, terminated = navigation_move(
            self._position, action, self.task_params
        )
        info = {"reward_distance": float(reward)}
        return self._position.astype(np.float32), float(reward), bool(terminated), False, info


class Navigation2DVectorEnv(TaskFamilyVectorEnv):
    """N 2D-navigation sub-envs stepped with numpy, one task each; no autoreset.

    See :class:`maml_envs.task_family.TaskFamilyVectorEnv` for the reset/step semantics.

    Args:
        num_envs: number of sub-envs N.
        low, high, task: as :class:`Navigation2DEnv`.
        max_episode_steps: horizon (passed by ``gymnasium.make_vec`` from the registration).
        num_threads: accepted for a uniform API with the MuJoCo families; unused (numpy only).
    """

    def __init__(
        self,
        num_envs: int,
        low: float = -0.5,
        high: float = 0.5,
        task: GoalPosition | None = None,
        max_episode_steps: int | None = 100,
        num_threads: int | None = None,
        render_mode: str | None = None,
    ):
        self.single_observation_space, self.single_action_space = _spaces()
        self._init_task_family(num_envs, GoalPositionTaskSpace(low, high), max_episode_steps, task)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.render_mode = render_mode
        self._position = np.zeros((self.num_envs, 2), dtype=np.float64)

    def set_state(self, position: np.ndarray) -> np.ndarray:
        """Set the (N, 2) positions (for tests); returns the observations."""
        position = np.asarray(position, dtype=np.float64)
        if position.shape != (self.num_envs, 2):
            raise ValueError(f"position has shape {position.shape}, expected {(self.num_envs, 2)}")
        self._position = position.copy()
        self._last_obs = self._position.astype(np.float32)
        return self._last_obs.copy()

    def _reset_all(self) -> np.ndarray:
        self._position = np.zeros((self.num_envs, 2), dtype=np.float64)
        return self._position.astype(np.float32)

    def _step_active(
        self, actions: np.ndarray, active: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        position, reward, terminated = navigation_move(self._position, actions, self.task_params)
        self._position = np.where(active[:, None], position, self._position)
        return (
            self._position.astype(np.float32),
            reward,
            terminated,
            {"reward_distance": reward.copy()},
        )
