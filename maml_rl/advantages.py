"""Returns, the linear feature baseline, GAE and advantage normalisation (pure functions).

All arrays are time-major: ``[T, *batch]`` with a 0/1 ``mask`` of the same shape marking the
valid (not padded) steps; an episode's valid steps are a prefix of its T steps. Per-task
quantities take ``[T, M, K, ...]`` (M tasks, K episodes per task).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from maml_rl.errors import UnusableBatchError

if TYPE_CHECKING:
    from maml_rl.batch import EpisodeBatch


def discounted_returns(rewards_t: Tensor, mask_t: Tensor, gamma: float) -> Tensor:
    """Rewards-to-go G_t = r_t + gamma * G_{t+1}, with G = 0 after an episode's last step.

    ``rewards_t`` and ``mask_t`` are ``[T, ...]``; padded steps get G_t = 0.
    """
    returns = torch.zeros_like(rewards_t)
    running = torch.zeros_like(rewards_t[0])
    for t in range(rewards_t.shape[0] - 1, -1, -1):
        running = (rewards_t[t] + gamma * running) * mask_t[t]
        returns[t] = running
    return returns


def baseline_features(obs_t: Tensor, mask_t: Tensor) -> Tensor:
    """rllab's linear-baseline features for ``obs_t`` of shape ``[T, ..., obs_dim]``.

    phi(s, t) = [clip(s, -10, 10), clip(s, -10, 10)^2, t/100, (t/100)^2, (t/100)^3, 1],
    with t the step index inside the episode; padded steps get all-zero features.
    """
    o = obs_t.clamp(-10.0, 10.0)
    steps = obs_t.shape[0]
    t = torch.arange(steps, dtype=obs_t.dtype, device=obs_t.device) / 100.0
    t = t.reshape(steps, *([1] * (obs_t.dim() - 1))).expand(*obs_t.shape[:-1], 1)
    ones = torch.ones_like(t)
    phi = torch.cat([o, o * o, t, t * t, t * t * t, ones], dim=-1)
    return phi * mask_t.unsqueeze(-1)


def normal_equations(features: Tensor, returns: Tensor) -> tuple[Tensor, Tensor]:
    """X^T X ``[M, F, F]`` and X^T y ``[M, F]`` per task, in float64, for ``features``
    ``[T, M, K, F]`` and ``returns`` ``[T, M, K]``: sums over the task's T x K samples.

    The samples are laid out once as a contiguous float64 ``[M, K * T, F]`` array (episode-major,
    the order in which ``torch.einsum("tmkf,tmkg->mfg", ...)`` flattens the summed dimensions)
    and both products are one batched matrix product each with its transpose view: the same
    products as the einsums, bit for bit (tests/test_advantages.py), without their two
    permuted copies of the largest array of an iteration (the ant's features: 40 x 20 x 200 x
    254 float64 values, 325 MB).
    """
    num_tasks, num_features = features.shape[1], features.shape[-1]
    x = features.permute(1, 2, 0, 3).to(torch.float64, memory_format=torch.contiguous_format)
    x = x.reshape(num_tasks, -1, num_features)
    y = returns.permute(1, 2, 0).to(torch.float64, memory_format=torch.contiguous_format)
    x_t = x.mT
    return torch.bmm(x_t, x), torch.bmm(x_t, y.reshape(num_tasks, -1, 1)).squeeze(-1)


def fit_linear_baseline(
    features: Tensor,
    returns: Tensor,
    reg_coeff: float = 1e-5,
    max_retries: int = 5,
) -> Tensor:
    """Ridge regression of returns on features, one fit per task.

    ``features``: ``[T, M, K, F]`` (zero rows at padded steps), ``returns``: ``[T, M, K]``.
    Solves (X^T X + c I) w = X^T y per task in float64 with c = ``reg_coeff``; a task whose
    solution is not finite is solved again with c multiplied by 10, at most ``max_retries``
    times (rllab's LinearFeatureBaseline); one that never gives a finite solution keeps a zero
    baseline. Returns the weights ``[M, F]``.

    The normal equations are formed for all tasks at once (:func:`normal_equations`), but
    solved one task at a time: torch's batched LU solve (MKL) failed on every call for F = 254
    (the rllab ant's features) once ``torch.set_num_threads`` had changed the thread count,
    which any code in the process may do (tests/test_advantages.py). Per task it is robust,
    for the smaller systems of the other families bit-identical to the batched solve, and the
    solve every recorded run used.
    """
    xtx, xty = normal_equations(features, returns)
    eye = torch.eye(xtx.shape[-1], dtype=xtx.dtype, device=xtx.device)
    weights = torch.zeros_like(xty)
    for task in range(xty.shape[0]):
        coeff = reg_coeff
        for _ in range(max_retries + 1):
            solution, _info = torch.linalg.solve_ex(xtx[task] + coeff * eye, xty[task])
            if bool(torch.isfinite(solution).all()):
                weights[task] = solution
                break
            coeff *= 10.0
    return weights.to(features.dtype)


def linear_baseline_values(
    obs_t: Tensor, mask_t: Tensor, returns_t: Tensor, reg_coeff: float = 1e-5
) -> Tensor:
    """Fit the per-task linear baseline on (obs, returns) and return V(s_t), ``[T, M, K]``."""
    phi = baseline_features(obs_t, mask_t)
    w = fit_linear_baseline(phi, returns_t, reg_coeff)
    return torch.einsum("tmkf,mf->tmk", phi, w) * mask_t


def gae(
    rewards_t: Tensor, values_t: Tensor, mask_t: Tensor, gamma: float, lambda_: float
) -> Tensor:
    """Generalised advantage estimation (Schulman et al. 2016).

    delta_t = r_t + gamma * V_{t+1} - V_t and A_t = delta_t + gamma * lambda * A_{t+1}, with
    V = 0 and A = 0 after an episode's last valid step (termination or time limit, as rllab).
    With lambda = 1 this is G_t - V_t.
    """
    adv = torch.zeros_like(rewards_t)
    next_value = torch.zeros_like(rewards_t[0])
    running = torch.zeros_like(rewards_t[0])
    for t in range(rewards_t.shape[0] - 1, -1, -1):
        delta = rewards_t[t] + gamma * next_value - values_t[t]
        running = (delta + gamma * lambda_ * running) * mask_t[t]
        adv[t] = running
        next_value = values_t[t] * mask_t[t]
    return adv


def normalize_per_task(adv_t: Tensor, mask_t: Tensor, eps: float = 1e-8) -> Tensor:
    """(A - mean) / (std + eps) per task over its valid steps; ``[T, M, K]`` in and out.

    Mean and (population) standard deviation are taken over the T x K valid entries of each
    task; padded steps come out as 0.
    """
    n = mask_t.sum(dim=(0, 2)).clamp_min(1.0)
    mean = (adv_t * mask_t).sum(dim=(0, 2)) / n
    var = (((adv_t - mean[None, :, None]) * mask_t) ** 2).sum(dim=(0, 2)) / n
    std = var.sqrt()
    return (adv_t - mean[None, :, None]) / (std[None, :, None] + eps) * mask_t


def compute_advantages(
    obs_t: Tensor,
    rewards_t: Tensor,
    mask_t: Tensor,
    gamma: float,
    gae_lambda: float,
    normalize: bool = True,
) -> Tensor:
    """The advantages both MAML loops use: linear baseline fitted per task, GAE, and (optionally)
    per-task normalisation. Shapes ``[T, M, K, ...]``; returns ``[T, M, K]``."""
    returns = discounted_returns(rewards_t, mask_t, gamma)
    values = linear_baseline_values(obs_t, mask_t, returns)
    adv = gae(rewards_t, values, mask_t, gamma, gae_lambda)
    return normalize_per_task(adv, mask_t) if normalize else adv


def unusable_reason(
    rewards_t: Tensor, mask_t: Tensor, adv_t: Tensor, normalized: bool
) -> str | None:
    """Why advantages ``adv_t`` computed from ``rewards_t`` cannot be learned from, or None.

    Shapes ``[T, M, K]``; only valid steps (``mask_t`` > 0) count. Unusable: a reward that is
    NaN or infinite; an advantage that is not finite; and, with per-task normalisation, a task
    whose rewards vary while all its advantages are exactly 0 (their variance overflowed
    float32, so dividing by an infinite standard deviation erased them; rewards near 1e20 do
    this). Only reads its inputs: the advantages themselves are never changed.
    """
    valid = mask_t > 0
    bad = valid & ~torch.isfinite(rewards_t)
    if bool(bad.any()):
        t, m, _ = (int(i) for i in bad.nonzero()[0])
        kind = "NaN" if bool(torch.isnan(rewards_t[bad]).any()) else "infinite"
        return f"the environment returned {kind} rewards (task {m} of the batch, step {t})"
    if not bool(torch.isfinite(adv_t[valid]).all()):
        scale = float(rewards_t[valid].abs().max())
        return f"advantages are not finite (rewards up to |r| = {scale:.3g}); scale rewards down"
    if normalized:
        low = torch.where(valid, rewards_t, torch.inf).amin(dim=(0, 2))
        high = torch.where(valid, rewards_t, -torch.inf).amax(dim=(0, 2))
        vanished = (high > low) & ((adv_t * mask_t).abs().amax(dim=(0, 2)) == 0)
        if bool(vanished.any()):
            m = int(vanished.nonzero()[0])
            scale = float(rewards_t[:, m][valid[:, m]].abs().max())
            return (
                f"the advantages of task {m} of the batch are all 0 although its rewards vary: "
                f"rewards up to |r| = {scale:.3g} overflow float32 when normalised; scale the "
                "rewards down"
            )
    return None


def _first(bad: Tensor) -> tuple[int, ...] | None:
    """The index of the earliest (smallest t) True entry of ``bad`` ``[T, M, K]``, or None."""
    return tuple(int(i) for i in bad.nonzero()[0]) if bool(bad.any()) else None


def non_finite_inputs(batch: EpisodeBatch) -> str | None:
    """What made a batch's rewards or advantages unusable when it was not the rewards: the
    observations, or the policy's (Box) actions, of a valid step not being finite before any
    reward is. Only called once :func:`unusable_reason` found the batch unusable."""
    valid = batch.mask > 0
    first_reward = _first(valid & ~torch.isfinite(batch.rewards))
    until = first_reward[0] if first_reward is not None else batch.mask.shape[0]
    obs = _first(valid & ~torch.isfinite(batch.observations).all(-1))
    if obs is not None and obs[0] <= until:
        t, m, k = obs
        return (
            "the environment returned non-finite observations "
            f"(task {m} of the batch, episode {k}, step {t})"
        )
    if batch.actions.is_floating_point():
        act = _first(valid & ~torch.isfinite(batch.actions).all(-1))
        if act is not None and act[0] <= until:
            t, m, k = act
            return (
                f"the policy's actions are not finite (task {m} of the batch, episode {k}, step "
                f"{t}): its parameters or outputs hold NaN or infinite values"
            )
    return None


def checked_advantages(
    batch: EpisodeBatch, gamma: float, gae_lambda: float, normalize: bool, what: str
) -> Tensor:
    """:func:`compute_advantages` of an episode batch; :class:`UnusableBatchError` naming
    ``what`` (e.g. "iteration 3, inner step 1 batch") when :func:`unusable_reason` finds its
    rewards or advantages unusable (saying so when non-finite observations or actions made
    them so: :func:`non_finite_inputs`)."""
    adv = compute_advantages(
        batch.observations, batch.rewards, batch.mask, gamma, gae_lambda, normalize
    )
    reason = unusable_reason(batch.rewards, batch.mask, adv, normalize)
    if reason is not None:
        raise UnusableBatchError(f"{what}: {non_finite_inputs(batch) or reason}")
    return adv
