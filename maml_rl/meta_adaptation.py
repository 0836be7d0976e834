"""The inner loop as the outer optimisers see it: theta'_i recomputed from theta.

:class:`Adaptation` is the one object every meta-optimiser (:mod:`maml_rl.meta_optimizers`) is
given for the inner loop: the policy, the inner step sizes (``inner_lr``, or Meta-SGD's learned
ones, an :class:`~maml_rl.meta_sgd.InnerStepSizes` passed in beside the policy) and the inner
objective; its :meth:`Adaptation.meta_parameters` (theta, then rho) are what the meta-optimisers
update. It is also the one place that decides first-order MAML: with ``first_order`` the
meta-gradient treats the inner gradients as constants, d theta'_i / d theta = I (Finn et al.
2017, sec. 5.2), so no graph is built through them (:meth:`Adaptation.create_graph`) and the
curvature drops their Hessians (:attr:`Adaptation.second_order`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from maml_rl.adaptation import InnerStep, adapt_steps
from maml_rl.batch import LossInputs
from maml_rl.meta_sgd import InnerStepSizes, MetaPolicy, step_sizes_for
from maml_rl.policy import MLPPolicy, Params
from maml_rl.settings import MetaLearnerSettings


class Adaptation:
    """Adapts the policy's theta to every task of a meta-batch, differentiably in theta (and in
    Meta-SGD's rho).

    Args:
        policy: the policy, theta its ``params()``.
        settings: ``inner_lr``, ``inner_objective`` and ``first_order`` are read.
        inner_step_sizes: Meta-SGD's learned step sizes (rho), or None: every step takes
            ``inner_lr``.
    """

    def __init__(
        self,
        policy: MLPPolicy,
        settings: MetaLearnerSettings,
        inner_step_sizes: InnerStepSizes | None = None,
    ) -> None:
        self.policy = policy
        self.inner_step_sizes = inner_step_sizes
        self.inner_lr = settings.inner_lr
        self.inner_objective = settings.inner_objective
        self.second_order = not settings.first_order
        """False for first-order MAML: the inner gradients are constants in the meta-step."""

    def meta_parameters(self) -> list[nn.Parameter]:
        """What the outer optimiser updates, in the order of its flat vectors: theta (the
        policy's parameters), then rho (Meta-SGD; one per theta parameter, in theta's order)."""
        return MetaPolicy(self.policy, self.inner_step_sizes).parameters()

    def create_graph(self, differentiable: bool) -> bool:
        """Whether to build the graph through the inner gradients: when the caller needs a
        differentiable theta' and the meta-gradient is second order."""
        return differentiable and self.second_order

    def step_sizes(self, num_steps: int) -> list[float | Params]:
        """The step size of each of ``num_steps`` inner steps: ``inner_lr``, or Meta-SGD's
        learned per-parameter step sizes (differentiable in rho, :mod:`maml_rl.meta_sgd`)."""
        schedule = [self.inner_lr] * num_steps
        return step_sizes_for(self.inner_step_sizes, schedule, self.inner_lr)

    def adapt_steps(
        self,
        inner_data: Sequence[LossInputs],
        differentiable: bool,
        gradient: Callable[[InnerStep], Params] | None = None,
    ) -> tuple[Params, list[InnerStep]]:
        """theta'_i after one inner step per batch in ``inner_data`` and the steps taken
        (:func:`~maml_rl.adaptation.adapt_steps`); ``gradient`` replaces autograd's inner
        gradient (given the step, it returns grad L_ij at the step's parameters)."""
        return adapt_steps(
            self.policy,
            self.policy.params(),
            inner_data,
            self.step_sizes(len(inner_data)),
            self.inner_objective,
            create_graph=self.create_graph(differentiable),
            gradient=gradient,
        )

    def adapt(self, inner_data: Sequence[LossInputs], differentiable: bool = False) -> Params:
        """theta'_i for every task after one inner step per batch in ``inner_data``."""
        return self.adapt_steps(inner_data, differentiable)[0]

    def adapt_detached(self, inner_data: Sequence[LossInputs]) -> Params:
        """theta'_i as constants (no graph): the parameters the next batch is sampled with."""
        return {name: p.detach() for name, p in self.adapt(inner_data).items()}


__all__: Sequence[str] = ["Adaptation"]
