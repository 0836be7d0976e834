"""Fixtures and helpers shared by the test modules (``from tests.conftest import ...``)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from maml_rl.batch import LossInputs, task_mean
from maml_rl.config import TrainConfig
from maml_rl.policy import GaussianMLPPolicy, Params, gaussian_kl, gaussian_log_prob

NAV = "MAML/Navigation2D-v0"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


# -- configs and run folders ---------------------------------------------------------------
SMALL_SIZES: dict[str, Any] = dict(
    meta_batch_size=2,
    episodes_per_task=2,
    hidden_sizes=[8],
    max_episode_steps=5,
    torch_threads=1,
    num_threads=1,
)
"""The smallest navigation run the run-folder and signal tests start (with :func:`tiny_config`)."""
SMALL_ARGS = [
    "meta_batch_size=2",
    "episodes_per_task=2",
    "hidden_sizes=[8]",
    "max_episode_steps=5",
    "torch_threads=1",
    "num_threads=1",
    "progress_bar=false",
]
""":data:`SMALL_SIZES` as ``--set`` arguments of the command line (no progress bar)."""


def tiny_config(**overrides: Any) -> TrainConfig:
    """A validated navigation config for quick runs: no progress bar, seed 3, checkpoints only
    at the end, named ``test``; ``overrides`` set the sizes and anything else."""
    values: dict[str, Any] = dict(
        env_id=NAV,
        checkpoint_every=100,
        progress_bar=False,
        seed=3,
        config_name="test",
    )
    values.update(overrides)
    return TrainConfig(**values).validate()


def progress_rows(run_dir: Path) -> list[dict[str, str]]:
    """The rows of a run's ``progress.csv``."""
    with open(Path(run_dir) / "progress.csv") as f:
        return list(csv.DictReader(f))


def logged_numbers(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The rows without wall times and messages: what two equal runs log identically."""
    skip = ("time/", "train/rejected")
    return [
        {k: v for k, v in r.items() if not k.startswith(skip) or k == "time/env_steps"}
        for r in rows
    ]


# -- environments ---------------------------------------------------------------------------
def make_vec(env_id: str, num_envs: int, **kwargs: Any) -> gym.vector.VectorEnv:
    """A family's native batched env with 2 physics threads."""
    return gym.make_vec(
        env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", num_threads=2, **kwargs
    )


def some_tasks(env_id: str, n: int, seed: int = 0) -> list:
    """``n`` tasks of the family drawn with ``seed``."""
    return gym.make(env_id).unwrapped.sample_tasks(n, np.random.default_rng(seed))


# -- meta-learning problems -----------------------------------------------------------------
def random_loss_inputs(num_tasks: int, n: int, obs_dim: int, act_dim: int, seed: int) -> LossInputs:
    """Float64 loss inputs from a seeded generator; task 0's last two samples are padding."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(num_tasks, n, dtype=torch.float64)
    mask[0, -2:] = 0.0
    return LossInputs(
        torch.randn(num_tasks, n, obs_dim, generator=g, dtype=torch.float64),
        torch.randn(num_tasks, n, act_dim, generator=g, dtype=torch.float64),
        torch.randn(num_tasks, n, generator=g, dtype=torch.float64),
        mask,
    )


def surrogate_and_kl_by_hand(
    policy: GaussianMLPPolicy,
    adapted: Params,
    old: tuple[torch.Tensor, torch.Tensor],
    post_update: LossInputs,
) -> tuple[float, float]:
    """The meta-step's objective written out from the policy's densities alone (independent of
    :mod:`maml_rl.meta_learner`): the surrogate -1/M sum_i mean_t ratio * A and the mean KL
    from the old adapted policy ``old = (mean, log_std)`` to the one of ``adapted``."""
    with torch.no_grad():
        mean, log_std = policy(post_update.observations, adapted)
        old_mean, old_log_std = old
        ratio = torch.exp(
            gaussian_log_prob(post_update.actions, mean, log_std)
            - gaussian_log_prob(post_update.actions, old_mean, old_log_std)
        )
        loss = -task_mean(ratio * post_update.advantages, post_update.mask).mean()
        kl = task_mean(gaussian_kl(old_mean, old_log_std, mean, log_std), post_update.mask).mean()
    return float(loss), float(kl)


def post_update_returns(config: TrainConfig, run_dir: Path) -> list[float]:
    """Train ``config`` into ``run_dir`` and return the mean post-update return per iteration."""
    from maml_rl.run import train

    returns: list[float] = []
    train(
        config,
        run_dir,
        stdout=False,
        callbacks=[lambda trainer, result: returns.append(float(result.post_returns.mean()))],
    )
    return returns


def assert_shards_make_the_whole_batch(sampler: Any, tasks: list, params: Params) -> None:
    """Sampling the tasks in two shards ([0] and the rest) gives the whole batch exactly."""
    from maml_rl.seeding import task_seeds

    seeds = task_seeds(123, len(tasks))
    whole = sampler.sample(tasks, params, 3, seed=123)
    rest = list(range(1, len(tasks)))
    parts = [sampler.sample_shard(tasks, params, 3, seeds, shard) for shard in ([0], rest)]
    for name, x in zip(whole._fields, whole):
        if x is None:  # no success flags
            assert all(getattr(p, name) is None for p in parts), name
            continue
        dim = 0 if name.startswith("episode") else 1
        assert torch.equal(x, torch.cat([getattr(p, name) for p in parts], dim=dim)), name
