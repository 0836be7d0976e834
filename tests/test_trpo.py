import math

import pytest
import torch

from maml_rl.policy import GaussianMLPPolicy
from maml_rl.trpo import (
    conjugate_gradient,
    flatten,
    hessian_vector_product,
    trpo_step,
    unflatten_like,
)

D = torch.float64


def test_conjugate_gradient_solves_spd_system():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(12, 12, generator=g, dtype=D)
    a = q @ q.T + 0.5 * torch.eye(12, dtype=D)
    b = torch.randn(12, generator=g, dtype=D)
    x, residual = conjugate_gradient(lambda v: a @ v, b, iters=40, residual_tol=1e-24)
    torch.testing.assert_close(x, torch.linalg.solve(a, b))
    assert residual < 1e-10
    _, r3 = conjugate_gradient(lambda v: a @ v, b, iters=3)
    assert r3 > residual  # stops after `iters` iterations


def test_hessian_vector_product_equals_explicit_hessian():
    policy = GaussianMLPPolicy(2, 2, (4,), "tanh").double()
    params = list(policy.parameters())
    obs = torch.randn(9, 2, dtype=D)
    act = torch.randn(9, 2, dtype=D)

    def f(flat):
        ps = unflatten_like(flat, params)
        named = dict(zip(dict(policy.named_parameters()).keys(), ps))
        mean, log_std = policy(obs, named)
        return ((mean - act) ** 2).sum() * log_std.exp().sum() + (mean**3).sum()

    theta = flatten([p.detach() for p in params])
    hessian = torch.autograd.functional.hessian(f, theta)
    mean, log_std = policy(obs)
    scalar = ((mean - act) ** 2).sum() * log_std.exp().sum() + (mean**3).sum()
    hvp = hessian_vector_product(scalar, params, damping=0.1)
    v = torch.randn(theta.numel(), dtype=D)
    torch.testing.assert_close(hvp(v), hessian @ v + 0.1 * v)
    torch.testing.assert_close(hvp(2 * v), 2 * (hessian @ v + 0.1 * v))  # graph reused


def _quadratic_problem(target, curvature):
    """loss = |x - target|^2 and KL = 1/2 sum curvature (x - x0)^2 from x0 = 0: the exact
    gradient, Hessian-vector product (damping 1e-5) and evaluate() of the explicit interface."""
    x = torch.zeros(2, dtype=D, requires_grad=True)
    anchor = x.detach().clone()

    def loss_kl():
        with torch.no_grad():
            return float(((x - target) ** 2).sum()), float(
                0.5 * (curvature * (x - anchor) ** 2).sum()
            )

    gradient = 2.0 * (x.detach() - target)
    return (
        x,
        float(((x - target) ** 2).sum()),
        gradient,
        lambda v: curvature * v + 1e-5 * v,
        loss_kl,
    )


def test_trpo_step_respects_trust_region_and_improves():
    x, loss, gradient, fvp, evaluate = _quadratic_problem(
        torch.tensor([3.0, -4.0], dtype=D), torch.tensor([1.0, 4.0], dtype=D)
    )
    res = trpo_step([x], loss, gradient, fvp, evaluate, max_kl=0.01)
    assert res.accepted and res.reason == "accepted"
    assert res.loss_after < res.loss_before
    assert res.kl <= 0.01 + 1e-12
    # the first trial is the full step, whose quadratic KL equals delta exactly
    assert res.step_fraction == 1.0 and res.kl == pytest.approx(0.01, rel=1e-4)  # damping 1e-5
    # and it moves along the natural-gradient direction -H^-1 g
    direction = -gradient / (torch.tensor([1.0, 4.0], dtype=D) + 1e-5)
    torch.testing.assert_close(x.detach() / x.detach().norm(), direction / direction.norm())


def test_trpo_step_rejects_non_finite_and_keeps_theta():
    x = torch.zeros(2, dtype=D, requires_grad=True)
    calls = []

    def evaluate():
        calls.append(1)
        return 0.0, 0.0

    for loss, gradient in (
        (math.inf, torch.ones(2, dtype=D)),
        (0.0, torch.tensor([1.0, math.nan], dtype=D)),
    ):
        res = trpo_step([x], loss, gradient, lambda v: v, evaluate)
        assert not res.accepted and res.reason == "non-finite-gradient"
    assert torch.equal(x.detach(), torch.zeros(2, dtype=D)) and not calls


def test_trpo_step_rejects_a_non_positive_curvature():
    x = torch.zeros(2, dtype=D, requires_grad=True)
    res = trpo_step([x], 1.0, torch.ones(2, dtype=D), lambda v: -v, lambda: (0.0, 0.0))
    assert not res.accepted and res.reason == "non-finite-step"
    assert torch.equal(x.detach(), torch.zeros(2, dtype=D))


def test_trpo_step_without_improvement_leaves_theta_unchanged():
    x = torch.tensor([1.0, 1.0], dtype=D, requires_grad=True)
    trials = []

    def evaluate():  # never improves on the loss 2.0
        trials.append(x.detach().clone())
        return 10.0, 0.0

    res = trpo_step(
        [x], 2.0, 2 * x.detach(), lambda v: v, evaluate, ls_backtrack_ratio=0.5, ls_max_steps=4
    )
    assert not res.accepted and res.reason == "no-improvement" and res.line_search_steps == 4
    assert torch.equal(x.detach(), torch.ones(2, dtype=D))
    # the trials shrink by the backtrack ratio: x0 - 0.5^i * full_step
    steps = [torch.ones(2, dtype=D) - t for t in trials]
    for i in range(1, 4):
        torch.testing.assert_close(steps[i], 0.5**i * steps[0])
