"""The benchmark's FLOP counting (scripts/roofline.py) against hand-counted matrix products."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from roofline import _flops, meta_step_roofline

from maml_rl.config import TrainConfig
from maml_rl.trainer import MAMLTrainer


def test_matmul_flops_forward_backward_and_double_backward():
    x = torch.randn(7, 5)
    w = torch.randn(5, 3, requires_grad=True)
    assert _flops(lambda: x @ w) == 2 * 7 * 5 * 3
    b = torch.randn(4, 7, 5)
    v = torch.randn(4, 5, 3, requires_grad=True)
    assert _flops(lambda: torch.bmm(b, v)) == 2 * 4 * 7 * 5 * 3
    out = torch.zeros(4, 7, 3)  # in-place accumulation (not in torch's registry) counts too
    assert _flops(lambda: out.baddbmm_(b, v.detach())) == 2 * 4 * 7 * 5 * 3
    assert _flops(lambda: out[0].addmm_(x, w.detach())) == 2 * 7 * 5 * 3

    def grad() -> None:  # forward mm, then the weight gradient x^T g (the input needs none)
        torch.autograd.grad((x @ w).sum(), w)

    assert _flops(grad) == 2 * (2 * 7 * 5 * 3)

    def double_backward() -> None:  # d/dw of (dL/dw . u) for L = sum((x w)^2)
        (g,) = torch.autograd.grad(((x @ w) ** 2).sum(), w, create_graph=True)
        torch.autograd.grad(g, w, torch.ones_like(g))

    assert _flops(double_backward) > _flops(grad)


def test_roofline_reports_positive_rates_for_a_tiny_run():
    config = TrainConfig(
        meta_batch_size=2, episodes_per_task=2, hidden_sizes=[8, 8], progress_bar=False
    ).validate()
    trainer = MAMLTrainer(config)
    try:
        out = meta_step_roofline(trainer, repeats=1)
    finally:
        trainer.close()
    for part in ("gradient", "fvp", "line_search_eval"):
        assert out[f"{part}_gflop"] > 0 and out[f"{part}_s"] > 0
        assert 0 < out[f"{part}_over_attainable"]
    assert out["fvp_gflop"] > out["line_search_eval_gflop"]
