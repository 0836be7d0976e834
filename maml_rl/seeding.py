"""Seeding streams: every random draw of a run comes from a seed derived from (run seed, ...).

A derived seed is ``SeedSequence([seed, *entropy])``'s first 32-bit word. The purposes mixed in:

================================  ==========================================================
``derive_seed(seed, i, TASKS)``    the M training tasks of meta-iteration i
``derive_seed(seed, i, INNER, j)`` the rollouts of inner step j of iteration i
``derive_seed(seed, i, POST_UPDATE)`` the post-update rollouts of iteration i
``derive_seed(seed, i, FISHER)``   the subsample of the curvature products (``cg_subsample``)
``derive_seed(seed, n, ORACLE_TASKS)`` the task stream of the oracle's n-th PPO env
``derive_seed(seed, TEST_STREAM)`` the evaluation's test tasks (its own test seed)
``derive_seed(seed, TEST_STREAM, 1 + j)`` the evaluation rollouts after j steps
``derive_seed(seed, TEST_STREAM, 1 + j, 1)`` the separate measured rollouts after j steps
================================  ==========================================================

Inside one sampler call, :func:`task_seeds` splits a batch seed into per-task seeds, so a task's
episodes do not depend on which sampler or worker runs them.
"""

from __future__ import annotations

import numpy as np

TASKS, INNER, POST_UPDATE, FISHER, ORACLE_TASKS = 0, 1, 2, 3, 3
"""Purposes mixed into derived seeds. ``ORACLE_TASKS`` equals ``FISHER``: an oracle run has
no meta-step, so the two streams never meet in one run (kept as recorded runs were made)."""

TEST_STREAM = 2**31 - 1
"""Mixed into the test seeds: ``derive_seed(seed, TEST_STREAM)`` for the test tasks and
``derive_seed(seed, TEST_STREAM, 1 + j)`` for the rollouts of step j. Training draws its tasks
from ``derive_seed(seed, iteration, 0)`` with iterations far below this, so the streams differ."""


def derive_seed(*entropy: int) -> int:
    """A 32-bit seed from (run seed, iteration, purpose, ...) via numpy's SeedSequence."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0])


def task_seeds(seed: int, num_tasks: int) -> list[int]:
    """Per-task seeds derived from a batch seed: task m's episodes depend on (seed, m) only, so
    any split of the tasks over samplers or workers reproduces the same batch."""
    states = np.random.SeedSequence(int(seed)).spawn(num_tasks)
    return [int(s.generate_state(1)[0]) for s in states]


def episode_seeds(task_seed: int, episodes: int) -> list[int]:
    """The reset seeds of one task's ``episodes`` sub-environments."""
    return [int(x) for x in np.random.SeedSequence(int(task_seed)).generate_state(episodes)]
