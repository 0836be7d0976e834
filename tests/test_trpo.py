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
    x = torch.zeros(2, dtype=D, requires_grad=True)
    anchor = x.detach().clone()

    def objective(create_graph):
        loss = ((x - target) ** 2).sum()
        kl = 0.5 * (curvature * (x - anchor) ** 2).sum()
        return loss, kl

    return x, objective


def test_trpo_step_respects_trust_region_and_improves():
    x, objective = _quadratic_problem(
        torch.tensor([3.0, -4.0], dtype=D), torch.tensor([1.0, 4.0], dtype=D)
    )
    res = trpo_step([x], objective, max_kl=0.01)
    assert res.accepted and res.reason == "accepted"
    assert res.loss_after < res.loss_before
    assert res.kl <= 0.01 + 1e-12
    # the first trial is the full step, whose quadratic KL equals delta exactly
    assert res.step_fraction == 1.0 and res.kl == pytest.approx(0.01, rel=1e-4)  # damping 1e-5


def test_trpo_step_rejects_non_finite_and_keeps_theta():
    x = torch.zeros(2, dtype=D, requires_grad=True)

    def objective(create_graph):
        return (x.sum() * math.inf), (x**2).sum()

    res = trpo_step([x], objective)
    assert not res.accepted and res.reason == "non-finite-gradient"
    assert torch.equal(x.detach(), torch.zeros(2, dtype=D))


def test_trpo_step_without_improvement_leaves_theta_unchanged():
    x = torch.tensor([1.0, 1.0], dtype=D, requires_grad=True)
    calls = []

    def objective(create_graph):
        calls.append(create_graph)
        loss = (x**2).sum() if create_graph else torch.tensor(10.0, dtype=D)  # never improves
        return loss, 0.5 * ((x - 1.0) ** 2).sum()

    res = trpo_step([x], objective, max_backtracks=4)
    assert not res.accepted and res.reason == "no-improvement" and res.line_search_steps == 4
    assert torch.equal(x.detach(), torch.ones(2, dtype=D))
    assert calls == [True, False, False, False, False]
