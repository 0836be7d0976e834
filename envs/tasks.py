"""Built-in task types and the task spaces (distributions) of the built-in families.

Tasks are frozen dataclasses: hashable, picklable, printable; ``as_array()`` gives the float
vector an oracle policy appends to its observation. Distributions follow Finn et al. (2017),
section 5.3 and appendix A.2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from maml_envs.task_family import TaskSpace


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


@dataclass(frozen=True)
class GoalVelocity:
    """Target forward velocity (m/s) of a locomotion task."""

    velocity: float

    def as_array(self) -> np.ndarray:
        return np.array([self.velocity], dtype=np.float64)


@dataclass(frozen=True)
class Direction:
    """Direction of travel along x: +1 (forward) or -1 (backward)."""

    direction: int

    def as_array(self) -> np.ndarray:
        return np.array([self.direction], dtype=np.float64)


@dataclass(frozen=True)
class GoalPosition:
    """Goal position (x, y) in the plane."""

    x: float
    y: float

    def as_array(self) -> np.ndarray:
        return np.array([self.x, self.y], dtype=np.float64)


def _check_range(low: float, high: float) -> tuple[float, float]:
    if not (_is_real(low) and _is_real(high) and math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"range bounds must be finite numbers, got low={low!r}, high={high!r}")
    if low > high:
        raise ValueError(f"range is empty: low={low} > high={high}")
    return float(low), float(high)


class VelocityTaskSpace(TaskSpace[GoalVelocity]):
    """Goal velocity uniform in [low, high]. Default task: the midpoint."""

    task_type: ClassVar[type] = GoalVelocity

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = _check_range(low, high)

    def sample(self, n: int, rng: np.random.Generator) -> list[GoalVelocity]:
        return [GoalVelocity(float(v)) for v in rng.uniform(self.low, self.high, size=n)]

    @property
    def default(self) -> GoalVelocity:
        return GoalVelocity(0.5 * (self.low + self.high))

    def _check_value(self, task: GoalVelocity) -> None:
        v = task.velocity
        if not _is_real(v) or not self.low <= v <= self.high:
            raise ValueError(f"goal velocity {v!r} outside [{self.low}, {self.high}]")


class DirectionTaskSpace(TaskSpace[Direction]):
    """Direction +1 or -1 with probability 1/2 each. Default task: Direction(+1)."""

    task_type: ClassVar[type] = Direction

    def sample(self, n: int, rng: np.random.Generator) -> list[Direction]:
        return [Direction(int(d)) for d in rng.choice(np.array([-1, 1]), size=n)]

    @property
    def default(self) -> Direction:
        return Direction(1)

    def _check_value(self, task: Direction) -> None:
        d = task.direction
        if isinstance(d, bool) or not isinstance(d, int | np.integer) or d not in (-1, 1):
            raise ValueError(f"direction must be the int -1 or +1, got {d!r}")


class GoalPositionTaskSpace(TaskSpace[GoalPosition]):
    """Goal position uniform in the square [low, high]^2. Default task: (high, high)."""

    task_type: ClassVar[type] = GoalPosition

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = _check_range(low, high)

    def sample(self, n: int, rng: np.random.Generator) -> list[GoalPosition]:
        xy = rng.uniform(self.low, self.high, size=(n, 2))
        return [GoalPosition(float(x), float(y)) for x, y in xy]

    @property
    def default(self) -> GoalPosition:
        return GoalPosition(self.high, self.high)

    def _check_value(self, task: GoalPosition) -> None:
        for name in ("x", "y"):
            value = getattr(task, name)
            if not _is_real(value) or not self.low <= value <= self.high:
                raise ValueError(f"goal {name}={value!r} outside [{self.low}, {self.high}]")
