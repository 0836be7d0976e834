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

rho is its own parameter object, :class:`InnerStepSizes`, held beside the policy (theta), never
inside it: :class:`MetaPolicy` is the pair, what meta-training learns. Its
:meth:`MetaPolicy.parameters` are the meta-parameters in the order the outer optimisers flatten
them (theta, then rho); its :meth:`MetaPolicy.state_dict` is a checkpoint's ``policy`` entry
(theta's keys, rho's under :data:`STATE_PREFIX`, the layout checkpoints have always had). At
test time, step j of the evaluation schedule ``[a, a/2, a/2, ...]`` (``a`` = ``inner_lr`` unless
overridden) takes alpha * schedule_j / inner_lr (:func:`step_sizes_for`): the learned sizes
first, half of them later.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from maml_rl.policy import MLPPolicy, Params


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


def step_sizes_for(
    learned: InnerStepSizes | None,
    schedule: Sequence[float],
    inner_lr: float,
    detach: bool = False,
) -> list[float | Params]:
    """The step sizes the inner steps take: ``schedule`` as it is without ``learned`` step sizes
    (plain MAML); with them, alpha * schedule_j / inner_lr per step (alpha itself where the
    schedule is ``inner_lr``, as in training). ``detach``: constants (test-time adaptation)."""
    if learned is None:
        return list(schedule)
    alphas = learned.alphas()
    if detach:
        alphas = {name: a.detach() for name, a in alphas.items()}
    return [
        alphas if lr == inner_lr else {name: a * (lr / inner_lr) for name, a in alphas.items()}
        for lr in schedule
    ]


STATE_PREFIX = "inner_step_sizes."
"""The prefix of rho's keys (``inner_step_sizes.log_alpha.N``, N in theta's order) in a
checkpoint's ``policy`` entry, beside theta's keys."""


@dataclass(frozen=True)
class MetaPolicy:
    """What meta-training learns: the policy (theta) and, with Meta-SGD, its learned inner step
    sizes (rho); ``step_sizes`` None: MAML's one scalar step size (``inner_lr``).

    :func:`maml_rl.load_policy` returns one; :func:`maml_rl.adapt` adapts with its step sizes.
    """

    policy: MLPPolicy
    step_sizes: InnerStepSizes | None = None

    @classmethod
    def fresh(cls, policy: MLPPolicy, step_size_init: float | None) -> MetaPolicy:
        """``policy`` with new learned step sizes, all ``step_size_init``, or none (None)."""
        if step_size_init is None:
            return cls(policy)
        return cls(policy, InnerStepSizes(policy.params(), step_size_init))

    def parameters(self) -> list[nn.Parameter]:
        """The meta-parameters in the order the outer optimisers flatten them: theta (the
        policy's parameters), then rho (one per theta parameter, in theta's order)."""
        rho = [] if self.step_sizes is None else list(self.step_sizes.log_alpha)
        return [*self.policy.parameters(), *rho]

    def state_dict(self) -> dict[str, Tensor]:
        """theta's state and rho's keys prefixed with :data:`STATE_PREFIX` (a checkpoint's
        ``policy`` entry); shared storage, as ``nn.Module.state_dict``."""
        state = dict(self.policy.state_dict())
        if self.step_sizes is not None:
            for key, value in self.step_sizes.state_dict().items():
                state[STATE_PREFIX + key] = value
        return state

    def load_state_dict(self, weights: Mapping[str, Tensor]) -> None:
        """Restore :meth:`state_dict`'s state: rho from the prefixed keys, theta from the rest
        (strict: a key missing or left over raises, as ``nn.Module.load_state_dict``)."""
        rho = {k[len(STATE_PREFIX) :]: v for k, v in weights.items() if k.startswith(STATE_PREFIX)}
        theta = {k: v for k, v in weights.items() if not k.startswith(STATE_PREFIX)}
        if self.step_sizes is None and rho:
            raise KeyError(f"rho's {sorted(rho)} given for a policy without learned step sizes")
        self.policy.load_state_dict(theta)
        if self.step_sizes is not None:
            self.step_sizes.load_state_dict(rho)

    def to(self, device: torch.device | str) -> MetaPolicy:
        """Move theta and rho to ``device`` (in place, as ``nn.Module.to``); returns self."""
        self.policy.to(device)
        if self.step_sizes is not None:
            self.step_sizes.to(device)
        return self


__all__: Sequence[str] = [
    "STATE_PREFIX",
    "InnerStepSizes",
    "MetaPolicy",
    "step_sizes_for",
]
