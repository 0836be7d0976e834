"""The MAML-TRPO meta-step (Finn et al. 2017, Algorithm 3, lines 8-10).

Given, for M tasks, the inner-loop batches D_i (one per inner step) and the post-update
batches D'_i sampled with the adapted policies pi_theta'_i, minimise the surrogate

    L(theta) = -1/M sum_i mean_{valid t,k in D'_i} [ pi_theta'_i(a|s) / pi_old'_i(a|s) * A'_i ]

subject to 1/M sum_i mean KL(pi_old'_i || pi_theta'_i) <= delta, where theta'_i is recomputed
from theta through the inner loop (:class:`~maml_rl.meta_adaptation.Adaptation`, second order
unless ``first_order``) and pi_old' is the
adapted policy at the current theta. The surrogate's gradient and the KL's curvature come from
:mod:`maml_rl.fisher` (hand-written passes, ``hvp="gauss_newton"``) or from autograd through
the second-order adaptation (``hvp="exact"``, the reference); :func:`maml_rl.trpo.trpo_step`
takes the step. With Meta-SGD's learned step sizes the meta-parameters are (theta, rho) and both
paths differentiate in both.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from maml_rl.adaptation import InnerStep
from maml_rl.batch import LossInputs, task_mean
from maml_rl.fisher import AdaptationCurvature, InnerLossCurvature, subsample
from maml_rl.meta_adaptation import Adaptation
from maml_rl.policy import Params, PolicyOutput
from maml_rl.settings import HVP_METHODS, MetaLearnerSettings
from maml_rl.trpo import TRPOResult, flatten, hessian_vector_product, trpo_step

OldPolicy = tuple[PolicyOutput, Tensor]
"""pi_old' on the post-update batch: its forward output and log-probabilities (detached)."""


class TRPO:
    """The MAML-TRPO meta-step (``algorithm: maml-trpo``), a
    :class:`~maml_rl.meta_optimizers.MetaOptimizer`.

    Args:
        adaptation: the inner loop (theta'_i from theta; first order or not).
        settings: the TRPO keys of :class:`~maml_rl.settings.MetaLearnerSettings` (``max_kl``,
            ``cg_iters``, ``cg_damping``, ``cg_subsample``, ``hvp``, the line search's).
        num_inner_steps: the registry's common constructor argument; TRPO keeps no state per
            inner step.
    """

    def __init__(
        self, adaptation: Adaptation, settings: MetaLearnerSettings, num_inner_steps: int = 1
    ) -> None:
        if settings.hvp not in HVP_METHODS:
            raise ValueError(f"unknown hvp method {settings.hvp!r}; choose one of {HVP_METHODS}")
        self.adaptation = adaptation
        self.policy = adaptation.policy
        self.settings = settings

    def state_dict(self) -> dict[str, Any]:
        """The meta-step's own state for checkpoints: none (TRPO keeps nothing between steps)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s state (nothing)."""

    def surrogate_and_kl(
        self,
        inner_data: Sequence[LossInputs],
        post_update: LossInputs,
        old: OldPolicy | None = None,
        create_graph: bool = True,
        adapted: dict[str, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, OldPolicy]:
        """Surrogate loss and mean KL at the current theta.

        ``old`` = (forward output, log_prob) of pi_old' on ``post_update``; ``None`` takes the
        current adapted policy as pi_old' (ratio 1, KL 0). ``adapted`` may pass theta'
        computed already. Returns (loss, kl, old).
        """
        if adapted is None:
            adapted = self.adaptation.adapt(inner_data, differentiable=create_graph)
        params = adapted
        output = self.policy(post_update.observations, params)
        logp = self.policy.log_prob(post_update.actions, output)
        if old is None:
            old = (self.policy.distribution.detach(output), logp.detach())
        ratio = torch.exp(logp - old[1])
        loss = -task_mean(ratio * post_update.advantages, post_update.mask).mean()
        kl = task_mean(self.policy.kl(old[0], output), post_update.mask).mean()
        return loss, kl, old

    def step(
        self,
        inner_data: Sequence[LossInputs],
        post_update: LossInputs,
        generator: torch.Generator | None = None,
    ) -> TRPOResult:
        """One TRPO meta-update of theta (in place); ``generator`` draws the Fisher subsample.

        The result's ``seconds`` holds ``gradient`` (the surrogate, its meta-gradient and the
        curvature's set-up), ``cg`` and ``line_search``. With learned (Meta-SGD) step sizes
        the step is taken in (theta, rho), the order of the adaptation's ``meta_parameters()``.
        """
        s = self.settings
        start = time.perf_counter()
        params = self.adaptation.meta_parameters()
        if s.hvp == "exact":
            loss, kl, old = self.surrogate_and_kl(inner_data, post_update, None, True)
            gradient = flatten(torch.autograd.grad(loss, params, retain_graph=True))
            fvp = hessian_vector_product(kl, params, s.cg_damping)
        else:
            loss, gradient, fvp, old = self.gradient_and_fvp(inner_data, post_update, generator)

        def evaluate() -> tuple[float, float]:
            with torch.enable_grad():
                new_loss, new_kl, _ = self.surrogate_and_kl(inner_data, post_update, old, False)
            return float(new_loss.detach()), float(new_kl.detach())

        seconds = {"gradient": time.perf_counter() - start}
        result = trpo_step(
            params,
            float(loss.detach()),
            gradient,
            fvp,
            evaluate,
            max_kl=s.max_kl,
            cg_iters=s.cg_iters,
            ls_backtrack_ratio=s.ls_backtrack_ratio,
            ls_max_steps=s.ls_max_steps,
        )
        result.seconds = {**seconds, **result.seconds}
        return result

    def _adapt_by_hand(
        self, inner_data: Sequence[LossInputs], keep: list[InnerLossCurvature]
    ) -> tuple[Params, list[InnerStep]]:
        """theta'_i with the inner gradients computed by hand (no autograd graph); ``keep``
        collects each step's :class:`~maml_rl.fisher.InnerLossCurvature` for reuse."""

        def gradient(step: InnerStep) -> Params:
            keep.append(InnerLossCurvature(self.policy, step))
            return keep[-1].gradient()

        with torch.no_grad():
            return self.adaptation.adapt_steps(inner_data, differentiable=False, gradient=gradient)

    def gradient_and_fvp(
        self,
        inner_data: Sequence[LossInputs],
        post_update: LossInputs,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor, Callable[[Tensor], Tensor], OldPolicy]:
        """Surrogate value, meta-gradient and damped Fisher-vector product by hand-written
        passes (:class:`maml_rl.fisher.AdaptationCurvature`); ``cg_subsample`` < 1 builds the
        product's curvature on a random subset of every batch (Schulman et al. 2015, sec. 6).
        With learned (Meta-SGD) step sizes both are in (theta, rho), flattened in the order of
        the adaptation's ``meta_parameters()`` (theta, then rho, both in theta's name order, as
        :class:`~maml_rl.fisher.AdaptationCurvature` flattens them)."""
        s = self.settings
        theta = self.policy.params()
        learned = self.adaptation.inner_step_sizes
        inner: list[InnerLossCurvature] = []
        adapted, steps = self._adapt_by_hand(inner_data, inner)
        with torch.no_grad():
            loss, _, old = self.surrogate_and_kl(inner_data, post_update, None, False, adapted)
        first_order = not self.adaptation.second_order
        curvature = AdaptationCurvature(
            self.policy, theta, adapted, steps, post_update, inner=inner, first_order=first_order
        )
        if first_order and learned is None:
            steps = []
        gradient_theta = curvature.surrogate_gradient(post_update.advantages)
        if s.cg_subsample < 1.0:
            gen = generator or torch.Generator().manual_seed(0)
            post_update_sample = subsample(post_update, s.cg_subsample, gen)
            steps = [
                dataclasses.replace(step, data=subsample(step.data, s.cg_subsample, gen))
                for step in steps
            ]
            curvature = AdaptationCurvature(
                self.policy, theta, adapted, steps, post_update_sample, first_order=first_order
            )
        return loss, gradient_theta, lambda v: curvature.fisher_vector_product(v, s.cg_damping), old
