"""Reward terms shared by the single and batched locomotion envs (pure numpy functions).

Each works on scalars (single env) and on (N,) / (N, k) arrays (batched env), so both compute
rewards with the same code. ``params`` is ``task.as_array()`` (or their (N, k) stack).
"""

from __future__ import annotations

import numpy as np


def goal_velocity_term(x_velocity: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Velocity task (Finn et al. 2017): ``-|v - v_goal|``."""
    return -np.abs(x_velocity - params[..., 0])


def direction_term(x_velocity: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Direction task (Finn et al. 2017): ``d * v``."""
    return params[..., 0] * x_velocity


def goal_position_l1_term(xy: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Goal-position task: ``-||xy - goal||_1``."""
    return -np.sum(np.abs(xy - params[..., :2]), axis=-1)


def control_cost(action: np.ndarray, weight: float) -> np.ndarray:
    """``weight * ||a||^2``."""
    return weight * np.sum(np.square(action), axis=-1)


def sum_terms(terms: dict[str, np.ndarray]) -> np.ndarray:
    """Sum the reward terms left to right (the same order in single and batched envs)."""
    total: np.ndarray | float = 0.0
    for value in terms.values():
        total = total + value
    return np.asarray(total, dtype=np.float64)
