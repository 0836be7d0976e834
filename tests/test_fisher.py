import pytest
import torch

from maml_rl.adaptation import InnerStep, adapt_steps, inner_loss
from maml_rl.batch import LossInputs
from maml_rl.fisher import AdaptationCurvature, InnerLossCurvature
from maml_rl.meta_learner import MetaLearner, MetaLearnerSettings
from maml_rl.policy import GaussianMLPPolicy
from maml_rl.trpo import flatten, hessian_vector_product, unflatten_like
from tests.test_meta_gradient import _data

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
]


def _curvature_problem(nonlinearity, objective, first_order, inner_steps):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(3, 2, (6, 5), nonlinearity, init_std=0.7).double()
    inner = [_data(4, 7, 3, 2, seed=s) for s in range(inner_steps)]
    valid = _data(4, 6, 3, 2, seed=100)
    settings = MetaLearnerSettings(inner_lr=0.3, inner_objective=objective, first_order=first_order)
    learner = MetaLearner(policy, settings)
    theta = policy.params()
    adapted, steps = adapt_steps(
        policy, theta, inner, [0.3] * inner_steps, objective, create_graph=False
    )
    curvature = AdaptationCurvature(policy, theta, adapted, [] if first_order else steps, valid)
    return policy, learner, inner, valid, curvature


@pytest.mark.parametrize(("nonlinearity", "objective", "first_order", "inner_steps"), CASES)
def test_fisher_product_equals_double_backward_kl_hessian(
    nonlinearity, objective, first_order, inner_steps
):
    policy, learner, inner, valid, curvature = _curvature_problem(
        nonlinearity, objective, first_order, inner_steps
    )
    _, kl, _ = learner.surrogate_and_kl(inner, valid)
    exact = hessian_vector_product(kl, list(policy.parameters()), damping=0.01)
    for seed in range(3):
        v = torch.randn(exact_size(policy), dtype=D, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(
            curvature.fisher_vector_product(v, damping=0.01), exact(v), rtol=1e-10, atol=1e-12
        )


@pytest.mark.parametrize(("nonlinearity", "objective", "first_order", "inner_steps"), CASES)
def test_meta_gradient_equals_autograd_through_the_adaptation(
    nonlinearity, objective, first_order, inner_steps
):
    policy, learner, inner, valid, curvature = _curvature_problem(
        nonlinearity, objective, first_order, inner_steps
    )
    loss, _, _ = learner.surrogate_and_kl(inner, valid)
    expected = flatten(torch.autograd.grad(loss, list(policy.parameters())))
    torch.testing.assert_close(
        curvature.surrogate_gradient(valid.advantages), expected, rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("objective", ["reinforce", "lvc"])
def test_inner_loss_hessian_product_equals_explicit_hessian(nonlinearity, objective):
    """H_in v per task against the explicit Hessian of that task's inner loss (autograd's
    ``hessian`` of the loss as a function of the flat parameters)."""
    torch.manual_seed(1)
    policy = GaussianMLPPolicy(3, 2, (4, 3), nonlinearity, init_std=0.8).double()
    data = _data(2, 9, 3, 2, seed=5)
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
    for task in range(2):
        one = LossInputs(*(x[task : task + 1] for x in data))

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
    inner, valid = [_data(4, 40, 3, 2, seed=1)], _data(4, 40, 3, 2, seed=2)
    learner = MetaLearner(policy, MetaLearnerSettings(inner_lr=0.3, cg_subsample=0.25))
    res = learner.step(inner, valid, generator=torch.Generator().manual_seed(0))
    assert res.accepted and res.kl <= 0.01 and res.loss_after < res.loss_before


def test_float32_meta_step_matches_the_float64_reference():
    """The learner runs in float32; its meta-gradient and CG step match float64 closely."""
    torch.manual_seed(0)
    policy64 = GaussianMLPPolicy(3, 2, (16, 16), "relu").double()
    policy32 = GaussianMLPPolicy(3, 2, (16, 16), "relu")
    policy32.load_state_dict({k: v.float() for k, v in policy64.state_dict().items()})
    inner64, valid64 = [_data(4, 50, 3, 2, seed=1)], _data(4, 50, 3, 2, seed=2)
    inner32 = [type(d)(*(x.float() for x in d)) for d in inner64]
    valid32 = type(valid64)(*(x.float() for x in valid64))
    before = torch.cat([p.detach().reshape(-1) for p in policy64.parameters()])
    steps = []
    for policy, inner, valid in ((policy64, inner64, valid64), (policy32, inner32, valid32)):
        res = MetaLearner(policy, MetaLearnerSettings(inner_lr=0.3)).step(inner, valid)
        assert res.accepted
        after = torch.cat([p.detach().double().reshape(-1) for p in policy.parameters()])
        steps.append(after - before)
    # the float32 update equals the float64 one to 1% of its size
    assert (steps[1] - steps[0]).norm() <= 1e-2 * steps[0].norm()
