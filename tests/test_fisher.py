import math

import pytest
import torch

from maml_rl.adaptation import InnerStep, adapt_steps, inner_loss
from maml_rl.batch import LossInputs
from maml_rl.fisher import AdaptationCurvature, InnerLossCurvature, task_group_size
from maml_rl.meta_optimizers import make_meta_optimizer
from maml_rl.policy import CategoricalMLPPolicy, GaussianMLPPolicy, replicate
from maml_rl.settings import MetaLearnerSettings
from maml_rl.trpo import flatten, hessian_vector_product, unflatten_like
from tests.conftest import random_loss_inputs, surrogate_and_kl_by_hand

D = torch.float64


CASES = [
    ("tanh", "reinforce", False, 1),
    ("tanh", "reinforce", False, 2),
    ("tanh", "lvc", False, 1),
    ("tanh", "lvc", False, 2),
    ("tanh", "reinforce", True, 1),
    ("tanh", "reinforce", False, 0),
    ("relu", "reinforce", False, 1),
    ("relu", "lvc", False, 2),
    ("tanh", "dice", False, 1),
    ("relu", "dice", False, 2),
]


def _curvature_problem(nonlinearity, objective, first_order, inner_steps, group_size=None):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(3, 2, (6, 5), nonlinearity, init_std=0.7).double()
    # 3 steps x 2 episodes per task (task 0's episodes end after 2 steps)
    inner = [
        random_loss_inputs(4, 6, 3, 2, seed=s)._replace(episodes=2) for s in range(inner_steps)
    ]
    valid = random_loss_inputs(4, 6, 3, 2, seed=100)
    settings = MetaLearnerSettings(inner_lr=0.3, inner_objective=objective, first_order=first_order)
    learner = make_meta_optimizer(policy, settings, 1)
    theta = policy.params()
    adapted, steps = adapt_steps(
        policy, theta, inner, [0.3] * inner_steps, objective, create_graph=False
    )
    curvature = AdaptationCurvature(
        policy, theta, adapted, [] if first_order else steps, valid, group_size
    )
    return policy, learner, inner, valid, curvature


@pytest.mark.parametrize("group_size", [None, 1, 3])  # 4 tasks: one group, 4 x 1, 3 + 1
@pytest.mark.parametrize(("nonlinearity", "objective", "first_order", "inner_steps"), CASES)
def test_fisher_product_equals_double_backward_kl_hessian(
    nonlinearity, objective, first_order, inner_steps, group_size
):
    policy, learner, inner, valid, curvature = _curvature_problem(
        nonlinearity, objective, first_order, inner_steps, group_size
    )
    _, kl, _ = learner.surrogate_and_kl(inner, valid)
    exact = hessian_vector_product(kl, list(policy.parameters()), damping=0.01)
    for seed in range(3):
        v = torch.randn(exact_size(policy), dtype=D, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(
            curvature.fisher_vector_product(v, damping=0.01), exact(v), rtol=1e-10, atol=1e-12
        )


@pytest.mark.parametrize("group_size", [None, 3])
@pytest.mark.parametrize(("nonlinearity", "objective", "first_order", "inner_steps"), CASES)
def test_meta_gradient_equals_autograd_through_the_adaptation(
    nonlinearity, objective, first_order, inner_steps, group_size
):
    policy, learner, inner, valid, curvature = _curvature_problem(
        nonlinearity, objective, first_order, inner_steps, group_size
    )
    loss, _, _ = learner.surrogate_and_kl(inner, valid)
    expected = flatten(torch.autograd.grad(loss, list(policy.parameters())))
    torch.testing.assert_close(
        curvature.surrogate_gradient(valid.advantages), expected, rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("objective", ["reinforce", "lvc", "dice"])
def test_inner_loss_hessian_product_equals_explicit_hessian(nonlinearity, objective):
    """H_in v per task against the explicit Hessian of that task's inner loss (autograd's
    ``hessian`` of the loss as a function of the flat parameters)."""
    torch.manual_seed(1)
    policy = GaussianMLPPolicy(3, 2, (4, 3), nonlinearity, init_std=0.8).double()
    data = random_loss_inputs(2, 9, 3, 2, seed=5)._replace(episodes=3)  # 3 steps x 3 episodes
    names = list(policy.params())
    like = [policy.params()[k] for k in names]
    theta = flatten([p.detach() for p in like])
    curvature = InnerLossCurvature(policy, InnerStep(policy.params(), data, 0.1, objective))
    v = torch.randn(2, theta.numel(), dtype=D, generator=torch.Generator().manual_seed(2))
    per_task = {
        k: torch.stack([unflatten_like(v[i], like)[j] for i in range(2)])
        for j, k in enumerate(names)
    }
    hv = curvature(per_task)
    # the inner gradient by hand equals autograd's
    params = {
        k: v.detach().unsqueeze(0).expand(2, *v.shape).clone().requires_grad_(True)
        for k, v in policy.params().items()
    }
    expected = torch.autograd.grad(
        inner_loss(policy, params, data, objective).sum(), list(params.values())
    )
    for k, g in zip(params, expected):
        torch.testing.assert_close(curvature.gradient()[k], g, rtol=1e-12, atol=1e-14)
    for task in range(2):
        one = data.map(lambda x, task=task: x[task : task + 1])

        def loss(flat, one=one):
            params = {k: t.unsqueeze(0) for k, t in zip(names, unflatten_like(flat, like))}
            return inner_loss(policy, params, one, objective).sum()

        hessian = torch.autograd.functional.hessian(loss, theta)
        got = flatten([hv[k][task] for k in names])
        torch.testing.assert_close(got, hessian @ v[task], rtol=1e-10, atol=1e-12)


def exact_size(policy):
    return sum(p.numel() for p in policy.parameters())


def test_subsampled_fisher_meta_step_stays_in_the_trust_region():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(3, 2, (6,), "tanh").double()
    inner, valid = (
        [random_loss_inputs(4, 40, 3, 2, seed=1)],
        random_loss_inputs(4, 40, 3, 2, seed=2),
    )
    learner = make_meta_optimizer(policy, MetaLearnerSettings(inner_lr=0.3, cg_subsample=0.25), 1)
    old = tuple(x.detach() for x in policy(valid.observations, learner.adaptation.adapt(inner)))
    res = learner.step(inner, valid, generator=torch.Generator().manual_seed(0))
    # the subsampled curvature only shapes the step: the reported KL, recomputed on all
    # samples, is the full-batch one, and the step is taken
    assert res.accepted
    loss_after, kl_after = surrogate_and_kl_by_hand(
        policy, learner.adaptation.adapt(inner), old, valid
    )
    assert res.kl == pytest.approx(kl_after, rel=1e-9) and 0 < kl_after <= 0.01
    assert res.loss_after == pytest.approx(loss_after, rel=1e-9)


def test_float32_meta_step_matches_the_float64_reference():
    """The learner runs in float32: its curvature products and meta-gradient equal float64's to
    float32 precision, and its step points the same way. (The steps themselves differ by up to
    ~2% here: CG at damping 1e-5 turns 1e-7 relative perturbations of the products into 0.4-2%
    of the step, measured by perturbing the float64 products; so the test bounds the angle.)"""
    torch.manual_seed(0)
    policy64 = GaussianMLPPolicy(3, 2, (16, 16), "relu").double()
    policy32 = GaussianMLPPolicy(3, 2, (16, 16), "relu")
    policy32.load_state_dict({k: v.float() for k, v in policy64.state_dict().items()})
    inner64, valid64 = (
        [random_loss_inputs(4, 50, 3, 2, seed=1)],
        random_loss_inputs(4, 50, 3, 2, seed=2),
    )
    inner32 = [d.map(lambda x: x.float()) for d in inner64]
    valid32 = valid64.map(lambda x: x.float())
    v = torch.randn(exact_size(policy64), dtype=D, generator=torch.Generator().manual_seed(3))
    products = []
    for policy, inner, valid in ((policy64, inner64, valid64), (policy32, inner32, valid32)):
        theta = policy.params()
        adapted, steps = adapt_steps(policy, theta, inner, [0.3], create_graph=False)
        curvature = AdaptationCurvature(policy, theta, adapted, steps, valid)
        fvp = curvature.fisher_vector_product(v.to(theta["log_std"].dtype), 1e-5)
        products.append((fvp.double(), curvature.surrogate_gradient(valid.advantages).double()))
    for got, want in zip(products[1], products[0]):
        assert (got - want).norm() <= 1e-5 * want.norm()
    before = torch.cat([p.detach().reshape(-1) for p in policy64.parameters()])
    steps = []
    for policy, inner, valid in ((policy64, inner64, valid64), (policy32, inner32, valid32)):
        res = make_meta_optimizer(policy, MetaLearnerSettings(inner_lr=0.3), 1).step(inner, valid)
        assert res.accepted
        after = torch.cat([p.detach().double().reshape(-1) for p in policy.parameters()])
        steps.append(after - before)
    cosine = torch.dot(steps[0], steps[1]) / (steps[0].norm() * steps[1].norm())
    assert cosine > 0.999
    assert (steps[1] - steps[0]).norm() <= 0.05 * steps[0].norm()


def _categorical_data(num_tasks, n, obs_dim, num_actions, seed):
    g = torch.Generator().manual_seed(seed)
    data = random_loss_inputs(num_tasks, n, obs_dim, 1, seed)
    actions = torch.randint(num_actions, (num_tasks, n), generator=g)
    return LossInputs(data.observations, actions, data.advantages, data.mask)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize(
    ("objective", "inner_steps"), [("reinforce", 1), ("lvc", 2), ("reinforce", 0)]
)
def test_categorical_products_equal_autograd(nonlinearity, objective, inner_steps):
    """The categorical head: FVP against the double-backward KL Hessian and the meta-gradient
    against autograd through the adaptation, as for the Gaussian."""
    torch.manual_seed(0)
    policy = CategoricalMLPPolicy(3, 4, (6, 5), nonlinearity).double()
    inner = [_categorical_data(4, 7, 3, 4, seed=s) for s in range(inner_steps)]
    valid = _categorical_data(4, 6, 3, 4, seed=100)
    learner = make_meta_optimizer(
        policy, MetaLearnerSettings(inner_lr=0.3, inner_objective=objective), 1
    )
    loss, kl, _ = learner.surrogate_and_kl(inner, valid)
    params = list(policy.parameters())
    expected_gradient = flatten(torch.autograd.grad(loss, params, retain_graph=True))
    exact = hessian_vector_product(kl, params, damping=0.01)
    theta = policy.params()
    adapted, steps = adapt_steps(policy, theta, inner, [0.3] * inner_steps, objective, False)
    curvature = AdaptationCurvature(policy, theta, adapted, steps, valid)
    torch.testing.assert_close(
        curvature.surrogate_gradient(valid.advantages), expected_gradient, rtol=1e-10, atol=1e-12
    )
    for seed in range(2):
        v = torch.randn(exact_size(policy), dtype=D, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(
            curvature.fisher_vector_product(v, 0.01), exact(v), rtol=1e-10, atol=1e-12
        )


def test_categorical_meta_step_equals_the_exact_reference():
    """A whole TRPO meta-step of a categorical policy: hand-written products and autograd's
    (double backward through the adaptation) take the same step."""
    inner, valid = [_categorical_data(4, 30, 3, 4, seed=1)], _categorical_data(4, 30, 3, 4, seed=2)
    updates = []
    for hvp in ("gauss_newton", "exact"):
        torch.manual_seed(0)
        policy = CategoricalMLPPolicy(3, 4, (8,), "relu").double()
        before = flatten([p.detach().clone() for p in policy.parameters()])
        res = make_meta_optimizer(policy, MetaLearnerSettings(inner_lr=0.3, hvp=hvp), 1).step(
            inner, valid
        )
        assert res.accepted
        updates.append(flatten([p.detach() for p in policy.parameters()]) - before)
    assert updates[0].norm() > 0
    torch.testing.assert_close(updates[0], updates[1], rtol=1e-8, atol=1e-10)


def test_task_group_size_keeps_a_group_in_the_cache_budget():
    # navigation (N = 2000, width 100, float32): 12 arrays of 0.8 MB per task -> 2 in 24 MiB
    assert task_group_size(20, 2000, 100, 4, cuda=False) == 2
    assert task_group_size(20, 2000, 100, 4, cuda=True) == 20
    assert task_group_size(40, 10**6, 100, 8, cuda=False) == 1
    assert task_group_size(2, 10, 10, 4, cuda=False) == 2


def test_adaptation_by_hand_equals_autograd_with_one_gradient_per_step():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(3, 2, (6, 5), "relu").double()
    inner = [random_loss_inputs(4, 7, 3, 2, seed=s) for s in range(2)]
    calls = []

    def gradient(step):
        calls.append(step)
        return InnerLossCurvature(policy, step).gradient()

    by_hand, steps = adapt_steps(policy, policy.params(), inner, [0.3, 0.2], gradient=gradient)
    autograd, _ = adapt_steps(policy, policy.params(), inner, [0.3, 0.2], create_graph=False)
    assert calls == steps and len(steps) == 2
    for k in autograd:
        torch.testing.assert_close(by_hand[k], autograd[k], rtol=1e-12, atol=1e-14)


def test_dice_gradient_is_reinforces_and_its_hessian_adds_the_cross_terms():
    """By hand on one task, 3 steps x 2 episodes (episode 1 ends after 2 steps): DiCE's value
    is -1/n sum_k A_0k, its gradient REINFORCE's, and its Hessian REINFORCE's plus
    -1/n sum_k sum_{t1,t2} A_{max(t1,t2),k} g_{t1,k} g_{t2,k}^T, g = grad log pi."""
    torch.manual_seed(3)
    policy = GaussianMLPPolicy(2, 1, (3,), "tanh", init_std=0.9).double()
    data = random_loss_inputs(1, 6, 2, 1, seed=7)
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0]], dtype=D)  # sample t*2 + k
    data = data._replace(mask=mask, episodes=2)
    names = list(policy.params())
    like = [policy.params()[k] for k in names]
    theta = flatten([p.detach() for p in like])

    def params_of(flat):
        return {k: t.unsqueeze(0) for k, t in zip(names, unflatten_like(flat, like))}

    def loss(flat, objective):
        return inner_loss(policy, params_of(flat), data, objective).sum()

    n = 5.0
    advantages = data.advantages[0] * mask[0]
    assert float(loss(theta, "dice")) == pytest.approx(-(advantages[0] + advantages[1]) / n)
    g_dice = torch.func.grad(lambda f: loss(f, "dice"))(theta)
    torch.testing.assert_close(g_dice, torch.func.grad(lambda f: loss(f, "reinforce"))(theta))

    def logp(flat):  # [6] per-sample log-probabilities
        return policy.log_prob(data.actions, policy(data.observations, params_of(flat)))[0]

    per_sample = torch.autograd.functional.jacobian(logp, theta)  # [6, P]
    cross = torch.zeros(theta.numel(), theta.numel(), dtype=D)
    for k in range(2):
        for t1 in range(3):
            for t2 in range(3):
                i, j = t1 * 2 + k, t2 * 2 + k
                if mask[0, i] and mask[0, j]:
                    a = advantages[max(t1, t2) * 2 + k]
                    cross += a * torch.outer(per_sample[i], per_sample[j])
    hessian_dice = torch.autograd.functional.hessian(lambda f: loss(f, "dice"), theta)
    hessian_reinforce = torch.autograd.functional.hessian(lambda f: loss(f, "reinforce"), theta)
    assert (hessian_dice - hessian_reinforce).abs().max() > 1e-3  # the terms are there
    torch.testing.assert_close(hessian_dice, hessian_reinforce - cross / n)


def test_dice_refuses_samples_without_their_episodes():
    policy = GaussianMLPPolicy(2, 1, (3,), "tanh").double()
    data = random_loss_inputs(1, 6, 2, 1, seed=7)
    with pytest.raises(ValueError, match="whole episodes"):
        inner_loss(policy, replicate(policy.params(), 1), data, "dice")


def test_the_old_policy_does_not_move_with_theta_without_an_inner_step():
    """With no inner step (the pretrained comparison) the Gaussian's log-std output is theta's
    own parameter: pi_old must be a copy, or a line-search trial that changes only the log-std
    reports KL 0 (it did before the distribution's detach copied)."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(3, 2, (6,), "tanh").double()
    valid = random_loss_inputs(4, 6, 3, 2, seed=100)
    learner = make_meta_optimizer(policy, MetaLearnerSettings(), 1)
    _, _, old = learner.surrogate_and_kl([], valid)
    with torch.no_grad():
        policy.log_std += 0.5
    _, kl, _ = learner.surrogate_and_kl([], valid, old, create_graph=False)
    # KL of N(mu, s) to N(mu, s e^0.5) per dimension: 0.5 + (e^-1 - 1) / 2, two dimensions
    expected = 2 * (0.5 + (math.exp(-1.0) - 1.0) / 2)
    assert float(kl) == pytest.approx(expected, rel=1e-12)
