"""Episode batches: what a sampler returns, and the task-major view the losses consume."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor


class EpisodeBatch(NamedTuple):
    """K episodes for each of M tasks, padded to T steps (time-major).

    Attributes:
        observations: ``[T, M, K, obs_dim]`` observation s_t before the action, 0 at padded steps.
        actions: ``[T, M, K, act_dim]`` float32, the sampled (unclipped) Gaussian actions of a
            Box action space, or ``[T, M, K]`` int64, the sampled indices 0..n-1 of a Discrete
            one (without the space's ``start``); 0 at padded steps.
        rewards: ``[T, M, K]`` r_t, 0 at padded steps.
        mask: ``[T, M, K]`` 1.0 at valid steps, 0.0 after an episode ended.
        episode_returns: ``[M, K]`` undiscounted return of each episode.
        episode_lengths: ``[M, K]`` number of valid steps of each episode.
        success: ``[T, M, K]`` float32 ``info["success"]`` of each step (0 at padded steps)
            when the env reports one (Meta-World), else None.
    """

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    episode_returns: Tensor
    episode_lengths: Tensor
    success: Tensor | None = None

    @property
    def num_tasks(self) -> int:
        return self.mask.shape[1]

    @property
    def num_steps(self) -> int:
        """Number of valid environment steps in the batch."""
        return int(self.episode_lengths.sum())


class LossInputs(NamedTuple):
    """Task-major, flattened samples for the policy-gradient losses: ``[M, N, ...]``, N = T*K,
    sample ``t * K + k`` being step t of episode k. ``episodes`` is K when the samples are
    whole episodes in that layout (what :func:`loss_inputs` makes; DiCE needs it), else None."""

    observations: Tensor
    actions: Tensor
    advantages: Tensor
    mask: Tensor
    episodes: int | None = None

    def map(self, fn: Callable[[Tensor], Tensor], keeps_episodes: bool = True) -> LossInputs:
        """``fn`` applied to every tensor; ``keeps_episodes=False`` when ``fn`` breaks the
        [M, T*K] episode layout (e.g. picks sample columns)."""
        tensors = (fn(x) for x in (self.observations, self.actions, self.advantages, self.mask))
        return LossInputs(*tensors, self.episodes if keeps_episodes else None)

    def to(self, device: torch.device | str) -> LossInputs:
        return self.map(lambda x: x.to(device))


def loss_inputs(batch: EpisodeBatch, advantages_t: Tensor) -> LossInputs:
    """Reorder ``[T, M, K, ...]`` batch tensors (and advantages) to ``[M, T*K, ...]``."""

    def task_major(x: Tensor) -> Tensor:
        steps, tasks, episodes = x.shape[:3]
        return x.transpose(0, 1).reshape(tasks, steps * episodes, *x.shape[3:])

    return LossInputs(
        task_major(batch.observations),
        task_major(batch.actions),
        task_major(advantages_t),
        task_major(batch.mask),
        batch.mask.shape[2],
    )


def task_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Per-task mean over valid samples: ``sum(v * m, -1) / sum(m, -1)`` for ``[M, N]`` inputs."""
    return (values * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


def episode_batch(
    observations: Tensor,
    actions: Tensor,
    rewards: Tensor,
    mask: Tensor,
    success: Tensor | None = None,
) -> EpisodeBatch:
    """The :class:`EpisodeBatch` of ``[T, M, K, ...]`` tensors, with each episode's return and
    length summed over time (how every sampler assembles its batch)."""
    return EpisodeBatch(
        observations=observations,
        actions=actions,
        rewards=rewards,
        mask=mask,
        episode_returns=rewards.sum(0),
        episode_lengths=mask.sum(0).long(),
        success=success,
    )


def episode_success(batch: EpisodeBatch) -> Tensor | None:
    """``[M, K]`` 1.0 for each episode that succeeded at any of its steps (Meta-World's episode
    success: its evaluation ends an episode at the first success), 0.0 otherwise; None when the
    env reports no ``success``."""
    if batch.success is None:
        return None
    return (batch.success * batch.mask).amax(dim=0).clamp(0.0, 1.0)
