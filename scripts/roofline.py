"""How close the exact meta-step comes to the machine's matrix-multiply rate.

For one meta-batch sampled at a preset's sizes, counts the floating-point operations of the
meta-step's three kinds of work with torch's ``FlopCounterMode`` (matrix products only: ``mm``,
``bmm``, ``addmm``, ``baddbmm``; element-wise work is not counted, so the ratios below are upper
bounds on how much of the time is arithmetic):

* **gradient**: :meth:`~maml_rl.meta_learner.TRPO.gradient_and_fvp`: adapt
  theta -> theta'_i, the surrogate at theta', the curvature's tapes
  (:class:`maml_rl.fisher.AdaptationCurvature`) and the meta-gradient with respect to theta;
* **curvature product**: one Fisher-vector product through the adaptation
  (:meth:`~maml_rl.fisher.AdaptationCurvature.fisher_vector_product`, applied ``cg_iters`` + 1
  times per meta-step);
* **line-search evaluation**: the surrogate and KL at a trial theta.

Each is timed (median of ``repeats``), giving achieved GFLOP/s; the attainable rate is measured
in the same process with the same threads by ``torch.bmm`` at the shapes that carry the
arithmetic: per task (N samples) x (hidden width) times (hidden x hidden), for the forward
products and for the weight gradients (N reduced). achieved / attainable is the phase's share of
the machine's matrix-multiply rate.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from maml_rl.inner_loop import adapt_on_fresh_rollouts
from maml_rl.trainer import MAMLTrainer

GIGA = 1e9


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall seconds of ``fn`` (after one warm-up call), waiting for queued GPU work."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class _MatmulFlops(TorchDispatchMode):
    """Counts the FLOPs of every op torch's flop counter has a formula for (the matrix
    products), their in-place forms (``baddbmm_``, which the registry lacks) and backward and
    double-backward ops included. ``FlopCounterMode`` itself cannot
    be used: its module tracker rejects ``autograd.grad`` on leaf tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        formula = flop_registry.get(packet)
        if formula is None and packet.__name__.endswith("_"):  # in-place: baddbmm_, addmm_
            formula = flop_registry.get(getattr(torch.ops.aten, packet.__name__[:-1], None))
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def _flops(fn: Callable[[], Any]) -> int:
    with _MatmulFlops() as counter:
        fn()
    return int(counter.total)


def attainable_gflops(
    tasks: int, samples: int, width: int, repeats: int = 3, device: torch.device | str = "cpu"
) -> float:
    """Best GFLOP/s of ``torch.bmm`` on ``device`` (the learner's) at the meta-step's two big
    shapes: [tasks, samples, width] @ [tasks, width, width] (forward / input gradients) and
    [tasks, width, samples] @ [tasks, samples, width] (weight gradients)."""
    x = torch.randn(tasks, samples, width, device=device)
    w = torch.randn(tasks, width, width, device=device)
    flops = 2.0 * tasks * samples * width * width
    forward = _median_seconds(lambda: torch.bmm(x, w), repeats)
    weight_grad = _median_seconds(lambda: torch.bmm(x.transpose(1, 2), x), repeats)
    return flops / min(forward, weight_grad) / GIGA


def meta_step_roofline(trainer: MAMLTrainer, repeats: int = 3) -> dict[str, float]:
    """GFLOP, seconds, achieved GFLOP/s and achieved / attainable for the gradient, one
    curvature product and one line-search evaluation at ``trainer``'s preset sizes."""
    c = trainer.config
    learner = trainer.meta_optimizer
    tasks = trainer.sample_tasks(10**6)  # a meta-batch no training iteration uses
    rollouts = adapt_on_fresh_rollouts(
        trainer.sampler,
        tasks,
        learner.policy.params(),
        c.episodes_per_task,
        [*(10**6 + j for j in range(c.num_inner_steps)), 2 * 10**6],
        lambda batch, j: trainer._to_loss_inputs(batch, f"roofline inner {j}"),
        lambda j, params, data: learner.adaptation.adapt_detached(data),
    )
    inner = rollouts.inputs
    post_update = trainer._to_loss_inputs(rollouts.batches[-1], "roofline")
    theta = learner.policy.params()
    state: dict[str, Any] = {}

    def gradient() -> None:
        _loss, _gradient, fvp, old = learner.gradient_and_fvp(inner, post_update, None)
        state.update(fvp=fvp, old=old)

    vector = torch.randn(sum(p.numel() for p in theta.values()), device=trainer.device)

    def product() -> None:
        state["fvp"](vector)

    def evaluation() -> None:
        with torch.enable_grad():
            learner.surrogate_and_kl(inner, post_update, state["old"], False)

    out: dict[str, float] = {}
    gradient()
    for name, fn in (
        ("gradient", gradient),
        ("fvp", product),
        ("line_search_eval", evaluation),
    ):
        out[f"{name}_gflop"] = _flops(fn) / GIGA
        out[f"{name}_s"] = _median_seconds(fn, repeats)
    width = max(c.hidden_sizes)
    samples = post_update.mask.shape[1]  # per task: the T x K steps, flattened
    out["attainable_gflops_per_s"] = attainable_gflops(
        len(tasks), samples, width, repeats, trainer.device
    )
    for name in ("gradient", "fvp", "line_search_eval"):
        achieved = out[f"{name}_gflop"] / out[f"{name}_s"]
        out[f"{name}_gflops_per_s"] = achieved
        out[f"{name}_over_attainable"] = achieved / out["attainable_gflops_per_s"]
    return out
