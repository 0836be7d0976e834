"""Built-in task types and the task spaces (distributions) of the built-in families.

Tasks are frozen dataclasses: hashable, picklable, printable; ``as_array()`` gives the float
vector an oracle policy appends to its observation. Distributions follow Finn et al. (2017),
section 5.3 and appendix A.2; those of the discrete-action families (bandits, tabular MDPs)
follow RL^2 (Duan et al. 2016) as tristandeleu/pytorch-maml-rl defines them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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


# --- discrete-action families (RL^2: Duan et al. 2016, arXiv:1611.02779) ---------------------
def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_floats(name: str, values: Any, length: int) -> np.ndarray:
    """``values`` as a float64 array; ValueError unless it is a tuple of ``length`` finite reals."""
    if not isinstance(values, tuple) or len(values) != length:
        got = len(values) if isinstance(values, tuple) else type(values).__name__
        raise ValueError(f"{name} must be a tuple of {length} floats, got {got}")
    if not all(_is_real(v) for v in values):
        raise ValueError(f"{name} must hold real numbers only")
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds non-finite values")
    return array


@dataclass(frozen=True)
class BernoulliArms:
    """Success probability of each arm of a K-armed Bernoulli bandit."""

    probabilities: tuple[float, ...]

    def as_array(self) -> np.ndarray:
        return np.array(self.probabilities, dtype=np.float64)


@dataclass(frozen=True)
class TabularMDP:
    """A random tabular MDP: mean rewards and transition probabilities, row-major flat tuples.

    ``reward_means[s * A + a]`` is E[r | s, a]; ``transitions[(s * A + a) * S + s']`` is
    P(s' | s, a). Use :meth:`reward_table` ((S, A)) and :meth:`transition_table` ((S, A, S)).
    The tables are left out of the repr (550 numbers for the default sizes).
    """

    num_states: int
    num_actions: int
    reward_means: tuple[float, ...] = field(repr=False)
    transitions: tuple[float, ...] = field(repr=False)

    def reward_table(self) -> np.ndarray:
        return np.array(self.reward_means, dtype=np.float64).reshape(
            self.num_states, self.num_actions
        )

    def transition_table(self) -> np.ndarray:
        return np.array(self.transitions, dtype=np.float64).reshape(
            self.num_states, self.num_actions, self.num_states
        )

    def as_array(self) -> np.ndarray:
        """``reward_means`` then ``transitions`` (length S*A + S*A*S)."""
        return np.array(self.reward_means + self.transitions, dtype=np.float64)


class BernoulliBanditTaskSpace(TaskSpace[BernoulliArms]):
    """Arm probabilities i.i.d. uniform in [0, 1) (RL^2; tristandeleu/pytorch-maml-rl
    ``bandit.py``). Default task: every arm 0.5."""

    task_type: ClassVar[type] = BernoulliArms

    def __init__(self, k: int) -> None:
        self.k = _check_count("number of arms k", k, 1)

    def sample(self, n: int, rng: np.random.Generator) -> list[BernoulliArms]:
        probabilities = rng.uniform(0.0, 1.0, size=(n, self.k))
        return [BernoulliArms(tuple(float(p) for p in row)) for row in probabilities]

    @property
    def default(self) -> BernoulliArms:
        return BernoulliArms((0.5,) * self.k)

    def _check_value(self, task: BernoulliArms) -> None:
        p = _check_floats("arm probabilities", task.probabilities, self.k)
        if (p < 0).any() or (p > 1).any():
            raise ValueError(f"arm probabilities must lie in [0, 1], got {task.probabilities}")


class TabularMDPTaskSpace(TaskSpace[TabularMDP]):
    """Random MDPs of RL^2 (Duan et al. 2016): for every (s, a), a mean reward
    ~ N(1, 1) and a transition distribution ~ Dirichlet(1, ..., 1) over the S next states.

    Draw order (transitions, then reward means) as tristandeleu/pytorch-maml-rl ``mdp.py``.
    Default task: uniform transitions, mean rewards 0 (as that port's default).
    """

    task_type: ClassVar[type] = TabularMDP

    def __init__(self, num_states: int, num_actions: int) -> None:
        self.num_states = _check_count("num_states", num_states, 1)
        self.num_actions = _check_count("num_actions", num_actions, 1)

    def sample(self, n: int, rng: np.random.Generator) -> list[TabularMDP]:
        s, a = self.num_states, self.num_actions
        transitions = rng.dirichlet(np.ones(s), size=(n, s, a))
        reward_means = rng.normal(1.0, 1.0, size=(n, s, a))
        return [
            TabularMDP(s, a, tuple(map(float, r.ravel())), tuple(map(float, t.ravel())))
            for r, t in zip(reward_means, transitions)
        ]

    @property
    def default(self) -> TabularMDP:
        s, a = self.num_states, self.num_actions
        return TabularMDP(s, a, (0.0,) * (s * a), (1.0 / s,) * (s * a * s))

    def _check_value(self, task: TabularMDP) -> None:
        s, a = self.num_states, self.num_actions
        if (task.num_states, task.num_actions) != (s, a):
            raise ValueError(
                f"MDP has {task.num_states} states and {task.num_actions} actions, "
                f"the family {s} and {a}"
            )
        _check_floats("reward_means", task.reward_means, s * a)
        p = _check_floats("transitions", task.transitions, s * a * s).reshape(s, a, s)
        if (p < 0).any():
            raise ValueError("transition probabilities must be >= 0")
        worst = float(np.abs(p.sum(-1) - 1.0).max())
        if worst > 1e-9:
            raise ValueError(f"transition rows must sum to 1 (off by up to {worst:.3g})")
