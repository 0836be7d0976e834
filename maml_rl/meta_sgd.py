"""Meta-SGD's learned inner step sizes (Li et al. 2017, "Meta-SGD: Learning to Learn Quickly
for Few-Shot Learning", eq. 1 and Algorithm 2 for reinforcement learning).

MAML's inner step theta'_i = theta - alpha grad L_i(theta) with one scalar alpha becomes

    theta'_i = theta - alpha o grad L_i(theta),

with alpha a tensor of theta's shape (one step size per parameter, o the elementwise product)
learned with theta by the outer optimiser: the meta-gradient reaches alpha through theta'_i
(d theta'_i / d alpha = -diag(grad L_i(theta))). Here alpha = exp(rho) elementwise, so every
step size stays positive whatever the outer step does (Li et al. leave alpha unconstrained; a
negative step size would ascend the inner loss), and rho starts at log(inner_lr), so training
starts from MAML's step. Every inner step of training uses the same learned alpha.

The step sizes live on the policy as its ``inner_step_sizes`` submodule (:func:`learn_step_sizes`):
they are in ``policy.parameters()`` and ``policy.state_dict()`` (so the outer optimisers,
checkpoints, resume and the evaluation's :func:`~maml_rl.run.load_policy` carry them) but not in
``policy.params()``, the forward's theta. At test time, step j of the evaluation schedule
``[a, a/2, a/2, ...]`` (``a`` = ``inner_lr`` unless overridden) takes alpha * schedule_j /
inner_lr (:func:`step_sizes_for`): the learned sizes first, half of them later.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from maml_rl.policy import LEARNED_STEP_SIZES, MLPPolicy, Params


class InnerStepSizes(nn.Module):
    """alpha = exp(rho): one positive step size per element of every policy parameter.

    Args:
        params: theta (name -> tensor), whose names and shapes the step sizes take.
        init: the initial step size of every element (> 0), e.g. ``inner_lr``.
    """

    def __init__(self, params: Params, init: float) -> None:
        super().__init__()
        if not init > 0:
            raise ValueError(f"learned inner step sizes start > 0, got {init}")
        self.names = list(params)
        self.log_alpha = nn.ParameterList(
            nn.Parameter(torch.full_like(p.detach(), math.log(init))) for p in params.values()
        )

    def alphas(self) -> Params:
        """alpha per parameter name: exp(rho), differentiable in rho."""
        return {name: rho.exp() for name, rho in zip(self.names, self.log_alpha)}

    def summary(self) -> dict[str, float]:
        """Mean, minimum and maximum of alpha over all elements (what training logs)."""
        with torch.no_grad():
            flat = torch.cat([rho.exp().reshape(-1) for rho in self.log_alpha])
        return {"mean": float(flat.mean()), "min": float(flat.min()), "max": float(flat.max())}


def learn_step_sizes(policy: MLPPolicy, init: float) -> MLPPolicy:
    """Give ``policy`` Meta-SGD's learned inner step sizes, all ``init`` (returns the policy)."""
    setattr(policy, LEARNED_STEP_SIZES, InnerStepSizes(policy.params(), init))
    return policy


def learned_step_sizes(policy: MLPPolicy) -> InnerStepSizes | None:
    """The policy's learned inner step sizes, or None (plain MAML: one scalar step size)."""
    learned = getattr(policy, LEARNED_STEP_SIZES, None)
    return learned if isinstance(learned, InnerStepSizes) else None


def step_sizes_for(
    policy: MLPPolicy, schedule: Sequence[float], inner_lr: float, detach: bool = False
) -> list[float | Params]:
    """The step sizes the inner steps take: ``schedule`` as it is for a plain policy; for one
    with learned step sizes, alpha * schedule_j / inner_lr per step (alpha itself where the
    schedule is ``inner_lr``, as in training). ``detach``: constants (test-time adaptation)."""
    learned = learned_step_sizes(policy)
    if learned is None:
        return list(schedule)
    alphas = learned.alphas()
    if detach:
        alphas = {name: a.detach() for name, a in alphas.items()}
    return [
        alphas if lr == inner_lr else {name: a * (lr / inner_lr) for name, a in alphas.items()}
        for lr in schedule
    ]
