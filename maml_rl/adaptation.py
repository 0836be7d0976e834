"""The inner loop of MAML: per-task policy-gradient steps, differentiable in theta.

theta'_i = theta - alpha * grad_theta L_i(theta), with (Finn et al. 2017, Algorithm 3)

    L_i(theta) = -mean_{valid t,k} log pi_theta(a_t|s_t) * A_t          ("reinforce")

or ProMP's LVC objective (Rothfuss et al. 2019, eq. 9), whose value and gradient are the same
but whose Hessian keeps the term from theta's effect on the pre-update sampling distribution:

    L_i(theta) = -mean_{valid t,k} exp(log pi_theta - stop_grad(log pi_theta)) * A_t  ("lvc")

or the DiCE objective (Foerster et al. 2018, "magic box" []x = exp(x - stop_grad(x))) over each
episode's cumulative log-probability S_{t,k} = sum_{t' <= t} log pi(a_t',k | s_t',k):

    L_i(theta) = -1/n sum_{k, t} [](S_{t,k}) (A_{t,k} - A_{t+1,k})                       ("dice")

with n the valid steps and A zero past an episode's end. Its gradient is REINFORCE's (the
increments telescope: sum_{t >= t'} (A_t - A_{t+1}) = A_t'); its Hessian adds to REINFORCE's the
terms sum_{t1, t2} A_{max(t1, t2)} grad log pi_t1 grad log pi_t2^T of the dependence between an
episode's steps (LVC keeps only t1 = t2). Its value is -1/n sum_k A_{0,k}, the estimate itself.

All M tasks adapt at once: theta is replicated along a task dimension, one backward pass of the
summed per-task losses gives the per-task gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from maml_rl.batch import LossInputs, task_mean
from maml_rl.policy import MLPPolicy, Params, is_task_batched, replicate
from maml_rl.settings import INNER_OBJECTIVES


def dice_increments(data: LossInputs) -> Tensor:
    """A_{t,k} - A_{t+1,k} per episode as ``[M, T, K]`` (A masked; zero past the end): DiCE's
    per-step weights, whose reverse cumulative sum over t is the advantage."""
    if data.episodes is None:
        raise ValueError(
            "the dice objective needs whole episodes in the [M, T*K] layout (LossInputs from "
            "batch.loss_inputs); these samples were subsampled or built without it"
        )
    num_tasks, n = data.mask.shape
    a = (data.advantages * data.mask).reshape(num_tasks, n // data.episodes, data.episodes)
    return a - torch.cat([a[:, 1:], torch.zeros_like(a[:, :1])], dim=1)


def inner_loss(
    policy: MLPPolicy, params: Params, data: LossInputs, objective: str = "reinforce"
) -> Tensor:
    """Per-task inner loss ``[M]`` for task-batched ``params`` on ``data`` (``[M, N, ...]``)."""
    logp = policy.log_prob(data.actions, policy(data.observations, params))
    if objective == "reinforce":
        weight = logp
    elif objective == "lvc":
        weight = torch.exp(logp - logp.detach())
    elif objective == "dice":
        num_tasks = logp.shape[0]
        increments = dice_increments(data)
        s = torch.cumsum((logp * data.mask).reshape(increments.shape), dim=1)
        total = (torch.exp(s - s.detach()) * increments).sum((1, 2))
        return -total / data.mask.reshape(num_tasks, -1).sum(-1).clamp_min(1.0)
    else:
        raise ValueError(f"unknown inner objective {objective!r}; choose one of {INNER_OBJECTIVES}")
    return -task_mean(weight * data.advantages, data.mask)


@dataclass(frozen=True)
class InnerStep:
    """One inner step as taken: the task-batched parameters it started from, its batch, its
    step size and objective (what the meta-step's curvature products need)."""

    params: Params
    data: LossInputs
    lr: float | Params
    """A scalar, or one tensor per parameter (Meta-SGD's learned step sizes)."""
    objective: str


def adapt_steps(
    policy: MLPPolicy,
    params: Params,
    inner_data: Sequence[LossInputs],
    step_sizes: Sequence[float | Params],
    objective: str = "reinforce",
    create_graph: bool = True,
    gradient: Callable[[InnerStep], Params] | None = None,
) -> tuple[Params, list[InnerStep]]:
    """Apply one policy-gradient step per element of ``inner_data`` (all tasks at once).

    ``params`` are the meta-parameters theta (replicated over the M tasks here) or already
    task-batched parameters. With ``create_graph`` the result is differentiable to second order
    in theta (MAML); without it the inner gradients are constants, so d theta'/d theta = I
    (first-order MAML). ``gradient`` may replace autograd's per-task gradient of the step's
    loss (the meta-step passes :meth:`maml_rl.fisher.InnerLossCurvature.gradient`'s, computed
    by hand, whose tapes it reuses). A step size is a scalar or, for Meta-SGD
    (:mod:`maml_rl.meta_sgd`), one tensor per parameter name of the parameter's unbatched shape,
    multiplied elementwise. Returns task-batched parameters ``[M, ...]`` and the steps taken.
    """
    if len(inner_data) != len(step_sizes):
        raise ValueError(f"got {len(inner_data)} inner batches but {len(step_sizes)} step sizes")
    num_tasks = inner_data[0].mask.shape[0] if inner_data else None
    if num_tasks is not None and not is_task_batched(params):
        params = replicate(params, num_tasks)
    steps: list[InnerStep] = []
    for data, lr in zip(inner_data, step_sizes):
        step = InnerStep(params, data, lr, objective)
        steps.append(step)
        if gradient is not None:
            by_hand = gradient(step)
            grads = [by_hand[k] for k in params]
        else:
            loss = inner_loss(policy, params, data, objective).sum()
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
        params = {
            k: p - (lr[k] if isinstance(lr, dict) else lr) * g
            for (k, p), g in zip(params.items(), grads)
        }
    return params, steps


def adapt(
    policy: MLPPolicy,
    params: Params,
    inner_data: Sequence[LossInputs],
    step_sizes: Sequence[float | Params],
    objective: str = "reinforce",
    create_graph: bool = True,
) -> Params:
    """The adapted task-batched parameters of :func:`adapt_steps`."""
    return adapt_steps(policy, params, inner_data, step_sizes, objective, create_graph)[0]
