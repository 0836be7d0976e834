"""The meta-gradient through the inner loop, against finite differences and references."""

import pytest
import torch

from maml_rl.adaptation import adapt, inner_loss
from maml_rl.meta_optimizers import make_meta_optimizer
from maml_rl.policy import GaussianMLPPolicy, gaussian_log_prob, replicate
from maml_rl.settings import MetaLearnerSettings
from tests.conftest import random_loss_inputs, surrogate_and_kl_by_hand

D = torch.float64


def _problem(objective="reinforce", first_order=False, inner_steps=1):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(3, 2, (5,), "tanh", init_std=0.8).double()
    inner = [random_loss_inputs(4, 7, 3, 2, seed=s) for s in range(inner_steps)]
    valid = random_loss_inputs(4, 6, 3, 2, seed=100)
    learner = make_meta_optimizer(
        policy,
        MetaLearnerSettings(inner_lr=0.3, inner_objective=objective, first_order=first_order),
        1,
    )
    return policy, learner, inner, valid


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_meta_gradient_matches_finite_differences(inner_steps):
    # (LVC's meta-gradient deliberately differs from the derivative of the surrogate on fixed
    # samples: its extra Hessian term is checked in the LVC test below.)
    policy, learner, inner, valid = _problem("reinforce", inner_steps=inner_steps)
    loss, _, old = learner.surrogate_and_kl(inner, valid)
    grads = torch.autograd.grad(loss, list(policy.parameters()))
    eps = 1e-6
    with torch.no_grad():
        for p, g in zip(policy.parameters(), grads):
            flat = p.view(-1)
            for j in range(0, flat.numel(), 3):
                orig = flat[j].item()
                flat[j] = orig + eps
                with torch.enable_grad():
                    up = learner.surrogate_and_kl(inner, valid, old, create_graph=False)[0]
                flat[j] = orig - eps
                with torch.enable_grad():
                    down = learner.surrogate_and_kl(inner, valid, old, create_graph=False)[0]
                flat[j] = orig
                fd = (up - down).item() / (2 * eps)
                assert g.view(-1)[j].item() == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_first_order_equals_gradient_with_detached_adaptation():
    policy, learner, inner, valid = _problem(first_order=True)
    loss, _, _ = learner.surrogate_and_kl(inner, valid)
    got = torch.autograd.grad(loss, list(policy.parameters()))

    theta = policy.params()
    rep = replicate(theta, 4)
    step = torch.autograd.grad(inner_loss(policy, rep, inner[0]).sum(), list(rep.values()))
    adapted = {k: p - 0.3 * g.detach() for (k, p), g in zip(rep.items(), step)}
    mean, log_std = policy(valid.observations, adapted)
    logp = gaussian_log_prob(valid.actions, mean, log_std)
    ratio = torch.exp(logp - logp.detach())
    per_task = -(ratio * valid.advantages * valid.mask).sum(-1) / valid.mask.sum(-1)
    expected = torch.autograd.grad(per_task.mean(), list(policy.parameters()))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    # and it differs from the second-order meta-gradient
    policy2, learner2, _, _ = _problem(first_order=False)
    loss2, _, _ = learner2.surrogate_and_kl(inner, valid)
    second = torch.autograd.grad(loss2, list(policy2.parameters()))
    assert any(not torch.allclose(a, b) for a, b in zip(got, second))


def test_batched_adaptation_equals_loop_over_tasks():
    policy, learner, inner, valid = _problem()
    loss, _, _ = learner.surrogate_and_kl(inner, valid)
    batched = torch.autograd.grad(loss, list(policy.parameters()))

    theta = policy.params()
    total = 0.0
    for i in range(4):
        task_inner = inner[0].map(lambda x, i=i: x[i : i + 1])
        single = adapt(policy, theta, [task_inner], [0.3])
        single = {k: v[0] for k, v in single.items()}
        mean, log_std = policy(valid.observations[i], single)
        logp = gaussian_log_prob(valid.actions[i], mean, log_std)
        ratio = torch.exp(logp - logp.detach())
        m = valid.mask[i]
        total = total - (ratio * valid.advantages[i] * m).sum() / m.sum() / 4
    looped = torch.autograd.grad(total, list(policy.parameters()))
    for a, b in zip(batched, looped):
        torch.testing.assert_close(a, b)


def test_lvc_has_reinforce_gradient_but_adds_score_outer_product_to_hessian():
    policy = GaussianMLPPolicy(2, 1, (3,), "tanh").double()
    data = random_loss_inputs(1, 5, 2, 1, seed=3)
    params = list(policy.parameters())

    def loss_of(objective):
        return inner_loss(policy, replicate(policy.params(), 1), data, objective).sum()

    g_r = torch.autograd.grad(loss_of("reinforce"), params)
    g_l = torch.autograd.grad(loss_of("lvc"), params)
    for a, b in zip(g_r, g_l):
        torch.testing.assert_close(a, b)

    def hessian(objective):
        grads = torch.autograd.grad(loss_of(objective), params, create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])
        rows = [
            torch.cat(
                [h.reshape(-1) for h in torch.autograd.grad(flat[i], params, retain_graph=True)]
            )
            for i in range(flat.numel())
        ]
        return torch.stack(rows)

    # per-sample scores s_j = grad log pi(a_j|s_j): H_lvc = H_reinforce - mean_j A_j s_j s_j^T
    correction = 0.0
    m = data.mask[0]
    for j in range(5):
        mean, log_std = policy(data.observations[0, j])
        logp = gaussian_log_prob(data.actions[0, j], mean, log_std)
        s = torch.cat([g.reshape(-1) for g in torch.autograd.grad(logp, params)])
        correction = correction + m[j] * data.advantages[0, j] * torch.outer(s, s)
    correction = correction / m.sum()
    torch.testing.assert_close(hessian("lvc"), hessian("reinforce") - correction)


def test_meta_step_reports_the_surrogate_and_kl_of_the_step_it_took():
    """The numbers TRPO reports are those of the parameters it leaves, recomputed by hand from
    the policy's densities (an accepted step implies improvement within the trust region; this
    checks that the step taken is the one those numbers describe)."""
    policy, learner, inner, valid = _problem()
    before = [p.detach().clone() for p in policy.parameters()]
    old_adapted = {k: v.detach() for k, v in learner.adaptation.adapt(inner).items()}
    old = tuple(x.detach() for x in policy(valid.observations, old_adapted))
    loss_before, kl_before = surrogate_and_kl_by_hand(policy, old_adapted, old, valid)
    res = learner.step(inner, valid)
    assert res.accepted and 0 < res.step_fraction <= 1
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))
    loss_after, kl_after = surrogate_and_kl_by_hand(
        policy, learner.adaptation.adapt(inner), old, valid
    )
    assert kl_before == 0.0
    assert res.loss_before == pytest.approx(loss_before, rel=1e-9)
    assert res.loss_after == pytest.approx(loss_after, rel=1e-9)
    assert res.kl == pytest.approx(kl_after, rel=1e-9)
