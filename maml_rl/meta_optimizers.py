"""The outer optimisers of the meta-step and the one registry that names them.

garage's ``MAML(inner_algo, meta_optimizer)`` in our terms: the trainer owns the inner loop
(:class:`~maml_rl.meta_adaptation.Adaptation`) and passes it to a meta-optimiser, built from
the ``algorithm`` string by :func:`make_meta_optimizer` through :data:`META_OPTIMIZERS`. A
meta-optimiser follows :class:`MetaOptimizer`: it updates the adaptation's meta-parameters
(:meth:`~maml_rl.meta_adaptation.Adaptation.meta_parameters`: theta, then Meta-SGD's rho) in
place from the inner batches D_ij and the post-update batches D'_i, returns a
:class:`StepResult` that says what to log, and keeps its own state for checkpoints
(``state_dict``, stored under the checkpoint's ``meta_optimizer`` key when not empty).

Entry points are strings, as Gymnasium registers environments, so importing this module
imports neither torch nor the optimisers: the algorithm names can be listed anywhere.

A fourth outer optimiser is a class with the constructor ``(adaptation, settings,
num_inner_steps, **kwargs)`` that follows :class:`MetaOptimizer`, and one entry here.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from maml_rl.batch import LossInputs
    from maml_rl.meta_adaptation import Adaptation
    from maml_rl.meta_sgd import InnerStepSizes
    from maml_rl.policy import MLPPolicy
    from maml_rl.settings import MetaLearnerSettings


class StepResult(Protocol):
    """What one meta-step did (Python numbers); every meta-step logs these fields as
    ``train/surrogate_before``, ``train/surrogate_after``, ``train/kl``, ``train/step_accepted``
    (and ``train/rejected_reason``) and ``seconds`` as ``time/meta_step_<name>_s``."""

    loss_before: float  # the surrogate at the theta of sampling
    loss_after: float  # the surrogate after the step (``loss_before`` if rejected)
    kl: float  # mean KL(pi_old' || pi_theta') on the post-update batches after the step
    accepted: bool  # False: theta (and the optimiser's state) left as they were
    reason: str  # "accepted" or why the step was rejected
    seconds: dict[str, float]  # wall seconds per part of the step

    def log_items(self) -> dict[str, float]:
        """The optimiser's own ``train/`` numbers (name without the prefix -> value), in the
        order they are logged."""
        ...


class MetaOptimizer(Protocol):
    """An outer optimiser: one meta-update of theta (and Meta-SGD's rho: the adaptation's
    ``meta_parameters()``) per call of :meth:`step`."""

    adaptation: Adaptation
    """The inner loop, theta'_i from theta (shared with the trainer)."""

    def step(
        self,
        inner_data: Sequence[LossInputs],
        post_update: LossInputs,
        generator: torch.Generator | None = None,
    ) -> StepResult:
        """Update theta in place from the inner batches and the post-update batches;
        ``generator`` draws whatever the step samples at random (e.g. a Fisher subsample)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The optimiser's state between steps (tensors on the CPU; empty when it keeps none)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s state."""
        ...


@dataclass(frozen=True)
class MetaOptimizerSpec:
    """One registered outer optimiser.

    Args:
        entry_point: ``"module:Class"`` of the class (imported when first built).
        label: the method's name in legends and tables (``MAML`` for MAML-TRPO).
        kwargs: extra constructor arguments (e.g. promp's KL penalty).
        inner_objective: the inner objective the algorithm itself implies (promp: ``lvc``), so
            that a label does not repeat it; None when any may be configured.
    """

    entry_point: str
    label: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    inner_objective: str | None = None


META_OPTIMIZERS: dict[str, MetaOptimizerSpec] = {
    "maml-trpo": MetaOptimizerSpec("maml_rl.meta_learner:TRPO", "MAML"),
    "maml-ppo": MetaOptimizerSpec("maml_rl.clipped_meta:ClippedAdam", "MAML-PPO"),
    "promp": MetaOptimizerSpec(
        "maml_rl.clipped_meta:ClippedAdam", "ProMP", {"penalised": True}, inner_objective="lvc"
    ),
}
"""``algorithm`` -> its outer optimiser; :data:`maml_rl.settings.ALGORITHMS` lists the same
names (tests check that they agree)."""


def meta_optimizer_spec(algorithm: str) -> MetaOptimizerSpec:
    """The registry entry of ``algorithm`` (ValueError naming the choices if there is none)."""
    try:
        return META_OPTIMIZERS[algorithm]
    except KeyError:
        raise ValueError(
            f"unknown algorithm {algorithm!r}; choose one of {list(META_OPTIMIZERS)}"
        ) from None


def meta_optimizer_class(algorithm: str) -> type:
    """The class registered for ``algorithm`` (its module imported)."""
    module, name = meta_optimizer_spec(algorithm).entry_point.split(":")
    return getattr(importlib.import_module(module), name)


def make_meta_optimizer(
    policy: MLPPolicy,
    settings: MetaLearnerSettings,
    num_inner_steps: int,
    inner_step_sizes: InnerStepSizes | None = None,
) -> MetaOptimizer:
    """The outer optimiser ``settings.algorithm`` names, for ``policy`` (and Meta-SGD's
    ``inner_step_sizes``, learned with it) with ``num_inner_steps`` inner steps per meta-batch,
    given a fresh :class:`~maml_rl.meta_adaptation.Adaptation` of both."""
    from maml_rl.meta_adaptation import Adaptation

    spec = meta_optimizer_spec(settings.algorithm)
    cls = meta_optimizer_class(settings.algorithm)
    adaptation = Adaptation(policy, settings, inner_step_sizes)
    return cls(adaptation, settings, num_inner_steps, **spec.kwargs)


__all__: Sequence[str] = [
    "META_OPTIMIZERS",
    "MetaOptimizer",
    "MetaOptimizerSpec",
    "StepResult",
    "make_meta_optimizer",
    "meta_optimizer_class",
    "meta_optimizer_spec",
]
