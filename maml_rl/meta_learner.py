"""The MAML-TRPO meta-step (Finn et al. 2017, Algorithm 3, lines 8-10).

Given, for M tasks, the inner-loop batches D_i (one per inner step) and the post-update
batches D'_i sampled with the adapted policies pi_theta'_i, minimise the surrogate

    L(theta) = -1/M sum_i mean_{valid t,k in D'_i} [ pi_theta'_i(a|s) / pi_old'_i(a|s) * A'_i ]

subject to 1/M sum_i mean KL(pi_old'_i || pi_theta'_i) <= delta, where theta'_i is recomputed
from theta through the inner loop (second order unless ``first_order``) and pi_old' is the
adapted policy at the current theta.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from maml_rl.adaptation import adapt
from maml_rl.batch import LossInputs, task_mean
from maml_rl.fisher import adapt_with_trace, fisher_vector_product, subsample
from maml_rl.policy import GaussianMLPPolicy, gaussian_kl, gaussian_log_prob
from maml_rl.settings import HVP_METHODS, MetaLearnerSettings
from maml_rl.trpo import TRPOResult, trpo_step


class MetaLearner:
    """Holds the policy (theta) and performs adaptation and TRPO meta-updates."""

    def __init__(self, policy: GaussianMLPPolicy, settings: MetaLearnerSettings) -> None:
        self.policy = policy
        self.settings = settings

    def adapt(
        self, inner_data: Sequence[LossInputs], create_graph: bool = False
    ) -> dict[str, Tensor]:
        """theta'_i for every task after one inner step per batch in ``inner_data``."""
        s = self.settings
        return adapt(
            self.policy,
            self.policy.params(),
            inner_data,
            [s.inner_lr] * len(inner_data),
            s.inner_objective,
            create_graph=create_graph and not s.first_order,
        )

    def surrogate_and_kl(
        self,
        inner_data: Sequence[LossInputs],
        valid_data: LossInputs,
        old: tuple[Tensor, Tensor, Tensor] | None = None,
        create_graph: bool = True,
        adapted: dict[str, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
        """Surrogate loss and mean KL at the current theta.

        ``old`` = (mean, log_std, log_prob) of pi_old' on ``valid_data``; ``None`` takes the
        current adapted policy as pi_old' (ratio 1, KL 0). ``adapted`` may pass theta'
        computed already. Returns (loss, kl, old).
        """
        params = adapted if adapted is not None else self.adapt(inner_data, create_graph)
        mean, log_std = self.policy(valid_data.observations, params)
        logp = gaussian_log_prob(valid_data.actions, mean, log_std)
        if old is None:
            old = (mean.detach(), log_std.detach(), logp.detach())
        ratio = torch.exp(logp - old[2])
        loss = -task_mean(ratio * valid_data.advantages, valid_data.mask).mean()
        kl = task_mean(gaussian_kl(old[0], old[1], mean, log_std), valid_data.mask).mean()
        return loss, kl, old

    def step(
        self,
        inner_data: Sequence[LossInputs],
        valid_data: LossInputs,
        generator: torch.Generator | None = None,
    ) -> TRPOResult:
        """One TRPO meta-update of theta (in place); ``generator`` draws the Fisher subsample."""
        s = self.settings
        if s.hvp not in HVP_METHODS:
            raise ValueError(f"unknown hvp method {s.hvp!r}; choose one of {HVP_METHODS}")
        old: list[tuple[Tensor, Tensor, Tensor] | None] = [None]
        graph: dict[str, object] = {}
        lrs = [s.inner_lr] * len(inner_data)
        theta = self.policy.params()

        def objective(create_graph: bool) -> tuple[Tensor, Tensor]:
            if create_graph:
                adapted, trace = adapt_with_trace(
                    self.policy, theta, inner_data, lrs, s.inner_objective, s.first_order
                )
                graph.update(adapted=adapted, trace=trace)
                loss, kl, old[0] = self.surrogate_and_kl(
                    inner_data, valid_data, old[0], True, adapted
                )
                return loss, kl
            with torch.enable_grad():
                loss, kl, _ = self.surrogate_and_kl(inner_data, valid_data, old[0], False)
            return loss.detach(), kl.detach()

        def gauss_newton() -> Callable[[Tensor], Tensor]:
            adapted, trace, valid = graph["adapted"], graph["trace"], valid_data
            if s.cg_subsample < 1.0:
                gen = generator or torch.Generator().manual_seed(0)
                valid = subsample(valid_data, s.cg_subsample, gen)
                inner = [subsample(d, s.cg_subsample, gen) for d in inner_data]
                _, trace = adapt_with_trace(
                    self.policy, theta, inner, lrs, s.inner_objective, s.first_order
                )
            return fisher_vector_product(self.policy, theta, adapted, trace, valid, s.cg_damping)

        return trpo_step(
            list(self.policy.parameters()),
            objective,
            max_kl=s.max_kl,
            cg_iters=s.cg_iters,
            cg_damping=s.cg_damping,
            backtrack_ratio=s.ls_backtrack_ratio,
            max_backtracks=s.ls_max_steps,
            hvp_fn=gauss_newton if s.hvp == "gauss_newton" else None,
        )
