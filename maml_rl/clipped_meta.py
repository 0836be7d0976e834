"""Clipped meta-steps: MAML-PPO and ProMP (``algorithm: maml-ppo | promp``).

Both minimise PPO's clipped surrogate (Schulman et al. 2017, eq. 7) of the post-update
batches D'_i through the adaptation, with several Adam steps on the same samples:

    L^CLIP(theta) = -1/M sum_i mean_{valid t,k in D'_i} min(r A', clip(r, 1 - eps, 1 + eps) A'),
    r = pi_theta'_i(a|s) / pi_old'_i(a|s),

where theta'_i is recomputed from theta through the inner loop before every Adam step (second
order, :func:`maml_rl.adaptation.adapt_steps` with ``create_graph``; first order with
``first_order``) and pi_old'_i is the adapted policy at the theta the batches were sampled with.
``maml-ppo`` (garage's ``MAMLPPO``) minimises L^CLIP with the configured inner objective.
``promp`` (Rothfuss et al., ICLR 2019, eq. 12 and ``meta_algos/pro_mp.py`` of their code) adapts
with the LVC inner objective as their code writes it, the likelihood ratio to the policy that
sampled the inner batch,

    L^LVC_ij(theta) = -mean_{valid t,k in D_ij} pi_theta_ij(a|s) / pi_old_ij(a|s) * A,

which at the theta of sampling has the value, gradient and Hessian of ``inner_objective: lvc``
(:func:`maml_rl.adaptation.inner_loss`) and on the later Adam steps weights each sample by its
ratio; and it adds a penalty on the inner steps' KL:

    L^ProMP(theta) = L^CLIP(theta) + 1/S sum_j eta_j KL_j(theta),
    KL_j(theta) = 1/M sum_i mean_{valid t,k in D_ij} KL(pi_old_ij(.|s) || pi_theta_ij(.|s)),

with D_ij the batch of inner step j, pi_theta_ij the policy that step starts from (theta for
j = 0, theta'_i after steps 0..j-1 otherwise, recomputed from the current theta) and pi_old_ij
the same at the theta of sampling: the penalty keeps the pre-update sampling distributions
close, as the clip keeps the post-update ones. The coefficients are adapted after every
meta-step when ``inner_kl_adaptive`` (:func:`adapt_kl_coefficients`, ProMP's rule).

Adam's moments and eta are the optimiser's state, saved in checkpoints (:meth:`state_dict`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from maml_rl.adaptation import InnerStep
from maml_rl.batch import LossInputs, task_mean
from maml_rl.meta_adaptation import Adaptation
from maml_rl.meta_learner import OldPolicy
from maml_rl.policy import MLPPolicy, Params, PolicyOutput
from maml_rl.settings import MetaLearnerSettings


def clipped_surrogate(ratio: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float) -> Tensor:
    """PPO's clipped surrogate loss over ``[M, N]`` samples (Schulman et al. 2017, eq. 7):

        -1/M sum_i mean_{valid n} min(r_in A_in, clip(r_in, 1 - eps, 1 + eps) A_in).

    Its gradient in r is -A_in / (M N_i) where the unclipped term is the smaller one (inside the
    band, or outside it on the side that makes the objective worse) and 0 where the clipped
    term is (outside the band on the side that would improve it). ``mask`` 0 marks padding.
    """
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    objective = torch.minimum(ratio * advantages, clipped * advantages)
    return -task_mean(objective, mask).mean()


def clip_fraction(ratio: Tensor, mask: Tensor, clip_eps: float) -> float:
    """Mean over tasks of the fraction of valid samples whose ratio lies outside
    [1 - eps, 1 + eps]."""
    outside = ((ratio - 1.0).abs() > clip_eps).to(mask.dtype)
    return float(task_mean(outside, mask).mean())


def inner_step_kls(
    policy: MLPPolicy, steps: Sequence[InnerStep], old: Sequence[PolicyOutput]
) -> Tensor:
    """``[S]``: for every inner step j, 1/M sum_i mean_{valid samples of D_ij} of
    KL(old_j || pi at the step's starting parameters) on the step's observations."""
    kls = [
        task_mean(
            policy.kl(old_j, policy(step.data.observations, step.params)), step.data.mask
        ).mean()
        for step, old_j in zip(steps, old)
    ]
    return torch.stack(kls) if kls else torch.zeros(0)


def adapt_kl_coefficients(eta: Tensor, kls: Tensor, target: float) -> Tensor:
    """ProMP's adaptive penalty coefficients (``_adapt_kl_coeff`` in ``pro_mp.py``), per inner
    step: eta / 2 where KL < target / 1.5, eta * 2 where KL > target * 1.5, else unchanged."""
    kls = kls.to(eta.dtype)
    factor = torch.where(kls < target / 1.5, 0.5, torch.where(kls > target * 1.5, 2.0, 1.0))
    return eta * factor.to(eta.dtype)


@dataclass
class ClippedResult:
    """What one clipped meta-step did (all floats are Python numbers); the fields it shares with
    :class:`~maml_rl.trpo.TRPOResult` mean the same."""

    loss_before: float  # L^CLIP at the theta of sampling (ratio 1)
    loss_after: float  # L^CLIP after the Adam steps
    kl: float  # mean KL(pi_old' || pi_theta') on the post-update batches, after the steps
    inner_kl: float  # mean over inner steps of KL_j, after the steps
    inner_kl_coef: float  # mean eta_j used in this meta-step (promp; 0 for maml-ppo)
    clip_fraction: float  # post-update samples with the ratio outside the band, after
    outer_steps: int  # Adam steps taken
    accepted: bool
    reason: str  # "accepted", "non-finite-loss", "non-finite-gradient"
    seconds: dict[str, float] = field(default_factory=dict)  # adam / statistics

    def log_items(self) -> dict[str, float]:
        """The clipped step's own ``train/`` numbers (:class:`~maml_rl.meta_optimizers.StepResult`):
        ``clip_fraction``, ``inner_kl``, ``inner_kl_coef`` and ``outer_steps``."""
        return {
            "clip_fraction": self.clip_fraction,
            "inner_kl": self.inner_kl,
            "inner_kl_coef": self.inner_kl_coef,
            "outer_steps": self.outer_steps,
        }


class _Evaluation(NamedTuple):
    surrogate: Tensor
    inner_kls: Tensor  # [S]
    outer_kl: Tensor
    ratio: Tensor
    old: OldPolicy
    old_inner: list[PolicyOutput]


class ClippedAdam:
    """MAML-PPO and ProMP meta-updates of the policy (theta) with Adam, a
    :class:`~maml_rl.meta_optimizers.MetaOptimizer` (``algorithm: maml-ppo | promp``).

    Args:
        adaptation: the inner loop (theta'_i from theta; first order or not); its
            ``meta_parameters()`` (theta, and Meta-SGD's rho) are updated in place.
        settings: :class:`~maml_rl.settings.ClippedSettings`' keys (``outer_lr``,
            ``outer_steps``, ``clip_eps``, the ``inner_kl_*`` ones).
        num_inner_steps: S, the inner steps of every meta-batch (one eta per step).
        penalised: add ProMP's KL penalty on the inner steps and adapt the inner batches with
            the LVC ratio to their sampling policy (promp); False: MAML-PPO.
    """

    def __init__(
        self,
        adaptation: Adaptation,
        settings: MetaLearnerSettings,
        num_inner_steps: int,
        penalised: bool = False,
    ) -> None:
        self.adaptation = adaptation
        self.policy = adaptation.policy
        self.settings = settings
        self.penalised = penalised
        self.optimizer = torch.optim.Adam(adaptation.meta_parameters(), lr=settings.outer_lr)
        self.eta = torch.full(
            (num_inner_steps,), float(settings.inner_kl_coef), dtype=torch.float64
        )

    # -- the objective -------------------------------------------------------------------------
    def evaluate(
        self,
        inner_data: Sequence[LossInputs],
        post_update: LossInputs,
        old: tuple[OldPolicy, list[PolicyOutput]] | None = None,
        create_graph: bool = True,
    ) -> _Evaluation:
        """L^CLIP, the inner KLs ``[S]`` and the post-update KL at the current theta.

        ``old`` = (pi_old' on ``post_update``, pi_old_j on each inner batch), detached; None
        takes the current policies (ratio 1, KLs 0) and returns them in the result's ``old``.
        ``create_graph``: theta' differentiable in theta (through the inner gradients unless the
        adaptation is first order, :meth:`~maml_rl.meta_adaptation.Adaptation.create_graph`).
        """
        s = self.settings
        adapted, steps = self.adaptation.adapt_steps(
            inner_data,
            differentiable=create_graph,
            gradient=self._lvc_gradient(old, create_graph) if self.penalised else None,
        )
        output = self.policy(post_update.observations, adapted)
        logp = self.policy.log_prob(post_update.actions, output)
        if old is None:
            old_inner = [
                self.policy.distribution.detach(self.policy(step.data.observations, step.params))
                for step in steps
            ]
            old = ((self.policy.distribution.detach(output), logp.detach()), old_inner)
        (old_output, old_logp), old_inner = old
        ratio = torch.exp(logp - old_logp)
        surrogate = clipped_surrogate(ratio, post_update.advantages, post_update.mask, s.clip_eps)
        outer_kl = task_mean(self.policy.kl(old_output, output), post_update.mask).mean()
        inner_kls = inner_step_kls(self.policy, steps, old_inner)
        return _Evaluation(surrogate, inner_kls, outer_kl, ratio, old[0], old_inner)

    def _lvc_gradient(
        self, old: tuple[OldPolicy, list[PolicyOutput]] | None, create_graph: bool
    ) -> Callable[[InnerStep], Params]:
        """promp's inner gradients: of L^LVC_ij, the ratio taken to the sampling policy of
        inner batch j (``old``; None: the current one, the ratio is then 1); differentiable
        when ``create_graph`` and the adaptation is second order."""
        create_graph = self.adaptation.create_graph(create_graph)
        taken = 0

        def gradient(step: InnerStep) -> Params:
            nonlocal taken
            data = step.data
            logp = self.policy.log_prob(data.actions, self.policy(data.observations, step.params))
            old_logp = (
                logp.detach() if old is None else self.policy.log_prob(data.actions, old[1][taken])
            )
            taken += 1
            loss = -task_mean(torch.exp(logp - old_logp) * data.advantages, data.mask).sum()
            names = list(step.params)
            grads = torch.autograd.grad(
                loss, [step.params[k] for k in names], create_graph=create_graph
            )
            return dict(zip(names, grads))

        return gradient

    def penalty(self, inner_kls: Tensor) -> Tensor:
        """promp: 1/S sum_j eta_j KL_j; maml-ppo (or S = 0): 0."""
        if not self.penalised or inner_kls.numel() == 0:
            return inner_kls.new_zeros(())
        return (self.eta.to(inner_kls) * inner_kls).mean()

    # -- the meta-step -------------------------------------------------------------------------
    def step(
        self,
        inner_data: Sequence[LossInputs],
        post_update: LossInputs,
        generator: torch.Generator | None = None,
    ) -> ClippedResult:
        """``outer_steps`` Adam steps on L^CLIP (+ the promp penalty) with these batches, theta
        updated in place; then eta adapted (promp, ``inner_kl_adaptive``). A non-finite loss or
        gradient leaves theta, Adam's moments and eta as they were. The steps draw nothing at
        random: ``generator`` (:class:`~maml_rl.meta_optimizers.MetaOptimizer`'s) is unused."""
        s = self.settings
        start = time.perf_counter()
        params = self.adaptation.meta_parameters()
        saved_params = [p.detach().clone() for p in params]
        saved_state = self.state_dict()
        eta_used = float(self.eta.mean()) if self.penalised and self.eta.numel() else 0.0

        def reject(reason: str, loss: float) -> ClippedResult:
            with torch.no_grad():
                for p, p0 in zip(params, saved_params):
                    p.copy_(p0)
            self.load_state_dict(saved_state)
            self.optimizer.zero_grad()
            seconds = {"adam": time.perf_counter() - start}
            return ClippedResult(loss, loss, 0.0, 0.0, eta_used, 0.0, 0, False, reason, seconds)

        old: tuple[OldPolicy, list[PolicyOutput]] | None = None
        loss_before = math.nan
        for _ in range(s.outer_steps):
            ev = self.evaluate(inner_data, post_update, old, create_graph=True)
            if old is None:
                old = (ev.old, ev.old_inner)
                loss_before = float(ev.surrogate.detach())
            total = ev.surrogate + self.penalty(ev.inner_kls)
            if not torch.isfinite(total):
                return reject("non-finite-loss", loss_before)
            self.optimizer.zero_grad()
            total.backward()
            if not all(p.grad is None or torch.isfinite(p.grad).all() for p in params):
                return reject("non-finite-gradient", loss_before)
            self.optimizer.step()
        self.optimizer.zero_grad()
        adam_s = time.perf_counter() - start
        after = self.evaluate(inner_data, post_update, old, create_graph=False)
        loss_after = float(after.surrogate.detach())
        if not math.isfinite(loss_after):
            return reject("non-finite-loss", loss_before)
        inner_kls = after.inner_kls.detach()
        if self.penalised and s.inner_kl_adaptive and inner_kls.numel():
            self.eta = adapt_kl_coefficients(self.eta, inner_kls, s.inner_kl_target)
        return ClippedResult(
            loss_before=loss_before,
            loss_after=loss_after,
            kl=float(after.outer_kl.detach()),
            inner_kl=float(inner_kls.mean()) if inner_kls.numel() else 0.0,
            inner_kl_coef=eta_used,
            clip_fraction=clip_fraction(after.ratio.detach(), post_update.mask, s.clip_eps),
            outer_steps=s.outer_steps,
            accepted=True,
            reason="accepted",
            seconds={"adam": adam_s, "statistics": time.perf_counter() - start - adam_s},
        )

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Adam's step count and moments (one tensor per meta-parameter, in the order of the
        adaptation's ``meta_parameters()``: theta, then rho; absent before the first step) and
        eta: tensors only, on the CPU."""
        state: dict[str, Any] = {"inner_kl_coef": self.eta.clone()}
        per_param = [self.optimizer.state.get(p, {}) for p in self.adaptation.meta_parameters()]
        if all(per_param):
            state["adam_step"] = torch.stack([st["step"].detach().cpu() for st in per_param])
            state["adam_exp_avg"] = [st["exp_avg"].detach().cpu().clone() for st in per_param]
            state["adam_exp_avg_sq"] = [st["exp_avg_sq"].detach().cpu().clone() for st in per_param]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s state (Adam's moments onto the parameters' device)."""
        self.eta = state["inner_kl_coef"].detach().clone().to(torch.float64)
        self.optimizer.state.clear()
        if "adam_step" not in state:
            return
        for p, step, m, v in zip(
            self.adaptation.meta_parameters(),
            state["adam_step"],
            state["adam_exp_avg"],
            state["adam_exp_avg_sq"],
        ):
            self.optimizer.state[p] = {
                "step": step.detach().clone(),
                "exp_avg": m.detach().clone().to(p),
                "exp_avg_sq": v.detach().clone().to(p),
            }


__all__: Sequence[str] = [
    "ClippedAdam",
    "ClippedResult",
    "adapt_kl_coefficients",
    "clip_fraction",
    "clipped_surrogate",
    "inner_step_kls",
]
