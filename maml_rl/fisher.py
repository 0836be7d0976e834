"""Fisher-vector products through the MAML adaptation (Gauss-Newton form of the KL Hessian).

At the current theta, pi_old' = pi_theta', so the Hessian of the mean KL(pi_old' || pi_theta')
is exactly the Gauss-Newton matrix

    H = J^T F J,      J = d(mu, log sigma)/d theta  (through the inner loop),

with F the Gaussian's Fisher information in its outputs: 1/sigma^2 for each mean coordinate and 2
for each log-std coordinate, weighted like the KL average (Martens 2014; Schulman et al. 2015,
appendix C). The Jacobian of the inner step theta' = theta - alpha * grad L_in(theta) is
I - alpha * H_in, so

    J v = J_out (I - alpha H_in) v,        J^T z = (I - alpha H_in) J_out^T z,

per task, where H_in v is a Hessian-vector product of the inner loss (reverse-over-reverse on
a graph built once) and J_out, J_out^T are the forward- and reverse-mode derivatives of the
policy outputs at theta'. This avoids the third-order graph of differentiating the KL gradient
through the second-order adaptation, and every graph is built once per meta-step and reused by
all conjugate-gradient iterations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from maml_rl.adaptation import inner_loss
from maml_rl.batch import LossInputs
from maml_rl.policy import GaussianMLPPolicy, Params, replicate
from maml_rl.trpo import flatten, unflatten_like


@dataclass
class InnerStep:
    """One inner step's graph: the parameters it started from and the gradient it took."""

    params: list[Tensor]
    grads: tuple[Tensor, ...]
    lr: float


def adapt_with_trace(
    policy: GaussianMLPPolicy,
    theta: Params,
    inner_data: Sequence[LossInputs],
    step_sizes: Sequence[float],
    objective: str,
    first_order: bool,
) -> tuple[Params, list[InnerStep]]:
    """Adapted task-batched parameters (differentiable in theta to second order unless
    ``first_order``) and the inner-gradient graphs that :func:`fisher_vector_product` needs."""
    params = replicate(theta, inner_data[0].mask.shape[0]) if inner_data else dict(theta)
    trace: list[InnerStep] = []
    for data, lr in zip(inner_data, step_sizes):
        values = list(params.values())
        loss = inner_loss(policy, params, data, objective).sum()
        grads = torch.autograd.grad(loss, values, create_graph=not first_order)
        if not first_order:
            trace.append(InnerStep(values, grads, lr))
        params = {k: p - lr * g for (k, p), g in zip(params.items(), grads)}
    return params, trace


def _inner_jacobian(trace: Sequence[InnerStep], vectors: list[Tensor]) -> list[Tensor]:
    """Apply prod_j (I - alpha_j H_j) to per-task vectors (H_j symmetric, so also J^T)."""
    for step in trace:
        hv = torch.autograd.grad(step.grads, step.params, grad_outputs=vectors, retain_graph=True)
        vectors = [v - step.lr * h for v, h in zip(vectors, hv)]
    return vectors


def subsample(data: LossInputs, fraction: float, generator: torch.Generator) -> LossInputs:
    """The same random ``fraction`` of the N sample columns of every task (at least one)."""
    n = data.mask.shape[1]
    keep = max(1, round(fraction * n))
    idx = torch.randperm(n, generator=generator)[:keep].sort().values.to(data.mask.device)
    return LossInputs(*(x[:, idx] for x in data))


def fisher_vector_product(
    policy: GaussianMLPPolicy,
    theta: Params,
    adapted: Params,
    trace: Sequence[InnerStep],
    valid_data: LossInputs,
    damping: float = 0.0,
) -> Callable[[Tensor], Tensor]:
    """Return v -> (J^T F J + damping I) v for the flattened meta-parameters ``theta``.

    ``adapted`` and ``trace`` come from :func:`adapt_with_trace`. The KL it is the Hessian of
    is ``mean_tasks(task_mean(KL_per_sample))`` on ``valid_data``, as in
    :meth:`maml_rl.meta_learner.MetaLearner.surrogate_and_kl`. Passing a ``trace`` and
    ``valid_data`` computed on a subset of the samples gives TRPO's subsampled Fisher
    (Schulman et al. 2015, section 6).
    """
    names = list(theta)
    theta_list = [theta[k] for k in names]
    num_tasks = valid_data.mask.shape[0]
    if adapted[names[0]].dim() == theta[names[0]].dim():  # no inner step: one set for all
        adapted = replicate(adapted, num_tasks)
    leaf = [adapted[k].detach().clone().requires_grad_(True) for k in names]
    mean, log_std = policy(valid_data.observations, dict(zip(names, leaf)))

    with torch.no_grad():
        weight = valid_data.mask / (
            valid_data.mask.sum(-1, keepdim=True).clamp_min(1.0) * num_tasks
        )
        mean_fisher = weight.unsqueeze(-1) * torch.exp(-2.0 * log_std)
        log_std_fisher = 2.0 * weight.sum(-1).reshape(num_tasks, *([1] * (log_std.dim() - 1)))

    # J_out u by the double-backward trick: J_out^T w is linear in w, so d(J_out^T w . u)/dw
    # = J_out u; the graph of J_out^T w is built once and reused by every product.
    w_mean = torch.zeros_like(mean, requires_grad=True)
    w_log_std = torch.zeros_like(log_std, requires_grad=True)
    jt_w = torch.autograd.grad((mean, log_std), leaf, (w_mean, w_log_std), create_graph=True)

    def fvp(v: Tensor) -> Tensor:
        v_list = unflatten_like(v, theta_list)
        u = [x.unsqueeze(0).expand(num_tasks, *x.shape).contiguous() for x in v_list]
        u = _inner_jacobian(trace, u)
        d_mean, d_log_std = torch.autograd.grad(
            jt_w, (w_mean, w_log_std), grad_outputs=u, retain_graph=True
        )
        z = torch.autograd.grad(
            (mean, log_std),
            leaf,
            grad_outputs=(mean_fisher * d_mean, log_std_fisher * d_log_std),
            retain_graph=True,
        )
        z = _inner_jacobian(list(reversed(trace)), list(z))
        return flatten([x.sum(0) for x in z]) + damping * v

    return fvp
