"""TRPO machinery (Schulman et al. 2015) for the MAML meta-step: conjugate gradient,
Hessian-vector products by double backward, the KL-scaled step and a backtracking line search.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate tensors into one flat vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten_like(vector: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split a flat vector into tensors shaped like ``like``."""
    out, i = [], 0
    for t in like:
        out.append(vector[i : i + t.numel()].view_as(t))
        i += t.numel()
    return out


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10, residual_tol: float = 1e-10
) -> tuple[Tensor, float]:
    """Approximately solve A x = b for symmetric positive-definite A given x -> A x.

    Standard CG from x_0 = 0 (Nocedal & Wright, Algorithm 5.2), stopping after ``iters``
    iterations or when ||r||^2 < ``residual_tol``. Returns x and the final residual norm ||r||.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = torch.dot(r, r)
    for _ in range(iters):
        if rr < residual_tol:
            break
        ap = matvec(p)
        alpha = rr / torch.dot(p, ap)
        x += alpha * p
        r -= alpha * ap
        rr_new = torch.dot(r, r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, float(rr.sqrt())


def hessian_vector_product(
    scalar: Tensor, params: Sequence[Tensor], damping: float = 0.0
) -> Callable[[Tensor], Tensor]:
    """Return v -> (d^2 scalar / d params^2) v + damping * v by double backward.

    The gradient graph is built once and reused (``retain_graph``) for every product.
    """
    grads = torch.autograd.grad(scalar, params, create_graph=True)
    flat_grad = flatten(grads)

    def hvp(v: Tensor) -> Tensor:
        hv = torch.autograd.grad(torch.dot(flat_grad, v), params, retain_graph=True)
        return flatten(hv) + damping * v

    return hvp


@dataclass
class TRPOResult:
    """What one TRPO step did (all floats are Python numbers)."""

    loss_before: float
    loss_after: float
    kl: float
    step_fraction: float  # 0.8^i of the accepted trial; 0.0 when the step was rejected
    line_search_steps: int  # number of trials evaluated
    cg_residual: float
    accepted: bool
    reason: str  # "accepted", "no-improvement", "non-finite-gradient", ...
    seconds: dict[str, float] = field(default_factory=dict)  # gradient / cg / line_search

    def log_items(self) -> dict[str, float]:
        """The TRPO step's own ``train/`` numbers (:class:`~maml_rl.meta_optimizers.StepResult`):
        ``step_fraction``, ``line_search_steps`` and ``cg_residual``."""
        return {
            "step_fraction": self.step_fraction,
            "line_search_steps": self.line_search_steps,
            "cg_residual": self.cg_residual,
        }


def trpo_step(
    params: Sequence[Tensor],
    loss: float,
    gradient: Tensor,
    fvp: Callable[[Tensor], Tensor],
    evaluate: Callable[[], tuple[float, float]],
    max_kl: float = 0.01,
    cg_iters: int = 10,
    ls_backtrack_ratio: float = 0.8,
    ls_max_steps: int = 15,
) -> TRPOResult:
    """One trust-region step on ``params`` in place.

    ``loss`` and ``gradient`` (flat, like ``params``) are the surrogate's value and gradient at
    the current parameters, ``fvp`` is v -> H v for H the Hessian of the KL(pi_old || pi_new)
    there (damped by the caller), and ``evaluate()`` returns ``(loss, kl)`` at the parameters'
    current values. The step solves H s = g by conjugate gradient, scales it to the trust
    region, beta = sqrt(2 delta / s^T H s), and backtracks theta - ratio^i beta s,
    i = 0..ls_max_steps-1, accepting the first trial with a finite loss lower than before and
    KL <= delta; otherwise theta is left unchanged. Non-finite losses, gradients or steps are
    rejected, never applied. ``seconds`` holds the ``cg`` and ``line_search`` times.
    """
    params = list(params)
    clock = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = now - clock
        clock = now

    if not math.isfinite(loss) or not torch.isfinite(gradient).all():
        return TRPOResult(loss, loss, 0.0, 0.0, 0, math.nan, False, "non-finite-gradient", seconds)
    step_dir, residual = conjugate_gradient(fvp, gradient, cg_iters)
    shs = float(torch.dot(step_dir, fvp(step_dir)))
    lap("cg")
    if not math.isfinite(shs) or shs <= 0 or not torch.isfinite(step_dir).all():
        return TRPOResult(loss, loss, 0.0, 0.0, 0, residual, False, "non-finite-step", seconds)
    full_step = math.sqrt(2.0 * max_kl / shs) * step_dir
    old = [p.detach().clone() for p in params]
    steps = unflatten_like(full_step, params)
    for i in range(ls_max_steps):
        fraction = ls_backtrack_ratio**i
        with torch.no_grad():
            for p, p0, s in zip(params, old, steps):
                p.copy_(p0 - fraction * s)
        new_loss, new_kl = evaluate()
        if math.isfinite(new_loss) and new_loss < loss and new_kl <= max_kl:
            lap("line_search")
            return TRPOResult(
                loss, new_loss, new_kl, fraction, i + 1, residual, True, "accepted", seconds
            )
    with torch.no_grad():
        for p, p0 in zip(params, old):
            p.copy_(p0)
    lap("line_search")
    return TRPOResult(
        loss, loss, 0.0, 0.0, ls_max_steps, residual, False, "no-improvement", seconds
    )
