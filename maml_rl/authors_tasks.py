"""The test tasks the authors' test scripts fix (cbfinn/maml_rl ``maml_examples/test_maml_*.py``).

Each script seeds NumPy's legacy global generator and draws 40 goals with ``uniform``:

============================  ===========  ===========  =====================================
family                        script       draw         task
============================  ===========  ===========  =====================================
HalfCheetahVel                cheetah      seed 1, U[0, 2)  goal velocity g
HalfCheetahDir                cheetah_direc  seed 1, U[0, 2)  direction -1 if g < 1 else +1
AntVel                        ant          seed 1, U[0, 3)  goal velocity g
AntDir                        ant_direc    seed 2, U[0, 3)  direction -1 if g < 1.5 else +1
============================  ===========  ===========  =====================================

(the direction thresholds are those of rllab's ``*_rand_direc.py`` envs, which turn the goal into
a direction). ``numpy.random.RandomState(seed)`` draws the same numbers as
``np.random.seed(seed)`` without touching the global generator. The same tasks serve the
rllab-exact and the Gymnasium v5 variant of a family.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from maml_envs.tasks import Direction, GoalVelocity

_SPECS: dict[str, tuple[int, float, float, Callable[[float], Any]]] = {
    "HalfCheetahVel": (1, 0.0, 2.0, lambda g: GoalVelocity(g)),
    "HalfCheetahDir": (1, 0.0, 2.0, lambda g: Direction(-1 if g < 1.0 else 1)),
    "AntVel": (1, 0.0, 3.0, lambda g: GoalVelocity(g)),
    "AntDir": (2, 0.0, 3.0, lambda g: Direction(-1 if g < 1.5 else 1)),
}


def family_name(env_id: str) -> str:
    """``MAML/HalfCheetahVel-rllab-v0`` -> ``HalfCheetahVel`` (namespace, variant, version off)."""
    return gym.spec(env_id).name.removesuffix("-rllab")


def has_authors_test_tasks(env_id: str) -> bool:
    """Whether the authors' test scripts fix test tasks for this family."""
    return family_name(env_id) in _SPECS


def authors_test_tasks(env_id: str, num_tasks: int = 40) -> list[Any]:
    """The first ``num_tasks`` test tasks of the authors' test script for ``env_id``'s family.

    Raises ValueError for a family whose test tasks the authors did not fix.
    """
    name = family_name(env_id)
    if name not in _SPECS:
        raise ValueError(
            f"the authors' test scripts fix no test tasks for {env_id}; they exist for "
            f"{', '.join(sorted(_SPECS))} (use the seeded test tasks)"
        )
    seed, low, high, make_task = _SPECS[name]
    goals = np.random.RandomState(seed).uniform(low, high, size=num_tasks)
    return [make_task(float(g)) for g in goals]
