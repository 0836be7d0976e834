"""Legend names of evaluated methods: a run's kind, or a meta-trained run's variant.

What ``maml-rl evaluate``, ``maml-rl curves`` and the comparison plots call a method when the
user gives no label.
"""

from __future__ import annotations

from maml_rl.config import TrainConfig
from maml_rl.meta_optimizers import meta_optimizer_spec

DEFAULT_LABELS = {
    "maml": "MAML",
    "pretrained": "pretrained",
    "random": "random init",
    "oracle": "oracle",
}
"""The default label of each run kind (a meta-trained run: :func:`maml_variant_label`)."""


def maml_variant_label(config: TrainConfig) -> str:
    """A meta-trained run's default legend name from its settings: ``MAML`` for the paper's
    MAML-TRPO, else the variant (``ProMP``, ``MAML-PPO``, ``first-order MAML``, ``MAML + DiCE``,
    ``Meta-SGD``, combined as set)."""
    spec = meta_optimizer_spec(config.algorithm)
    name = spec.label
    if config.first_order:
        name = f"first-order {name}"
    if config.inner_objective == "dice":
        name = f"{name} + DiCE"
    elif config.inner_objective == "lvc" and spec.inner_objective != "lvc":
        name = f"{name} + LVC"
    if config.meta_sgd:
        name = f"Meta-SGD ({name})" if name != "MAML" else "Meta-SGD"
    return name


__all__ = ["DEFAULT_LABELS", "maml_variant_label"]
