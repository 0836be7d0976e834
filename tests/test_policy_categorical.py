"""The categorical MLP policy, its log-probability and KL, and the policy choice by action space."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from maml_rl.policy import (
    CategoricalMLPPolicy,
    GaussianMLPPolicy,
    categorical_kl,
    categorical_log_prob,
    is_task_batched,
    policy_class_for,
    replicate,
)


def test_log_prob_by_hand():
    # probabilities (1/6, 2/6, 3/6) and (1/2, 1/4, 1/4); a constant shift of the logits cancels
    logits = torch.tensor(
        [[0.0, math.log(2.0), math.log(3.0)], [5.0 + math.log(2.0), 5.0, 5.0]],
        dtype=torch.float64,
    )
    actions = torch.tensor([1, 2])
    got = categorical_log_prob(actions, logits)
    assert got.shape == (2,)
    torch.testing.assert_close(
        got, torch.tensor([math.log(1 / 3), math.log(1 / 4)], dtype=torch.float64)
    )
    all_actions = categorical_log_prob(torch.tensor([0, 1, 2]), logits[0].expand(3, 3))
    torch.testing.assert_close(all_actions.exp().sum(), torch.tensor(1.0, dtype=torch.float64))


def test_log_prob_shapes_gradient_and_torch_distributions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, 5, dtype=torch.float64, generator=g, requires_grad=True)
    actions = torch.randint(0, 5, (4, 6), generator=g)
    got = categorical_log_prob(actions, logits)
    assert got.shape == (4, 6)
    expected = torch.distributions.Categorical(logits=logits).log_prob(actions)
    torch.testing.assert_close(got, expected)
    # d log pi(a) / d z = onehot(a) - softmax(z)
    (grad,) = torch.autograd.grad(got.sum(), logits)
    onehot = torch.nn.functional.one_hot(actions, 5).double()
    torch.testing.assert_close(grad, onehot - torch.softmax(logits.detach(), -1))


def test_log_prob_rejects_float_actions():
    with pytest.raises(TypeError, match="integer tensor"):
        categorical_log_prob(torch.tensor([1.0]), torch.zeros(1, 3))


def test_kl_by_hand():
    # p = (1/2, 1/2), q = (1/4, 3/4): KL = 1/2 ln(2) + 1/2 ln(2/3) = 1/2 ln(4/3)
    logits_p = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    logits_q = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    got = categorical_kl(logits_p, logits_q)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(0.5 * math.log(4.0 / 3.0), abs=1e-15)
    # and the other direction: 1/4 ln(1/2) + 3/4 ln(3/2)
    back = categorical_kl(logits_q, logits_p).item()
    assert back == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-15)


def test_kl_matches_torch_distributions_and_vanishes_on_equal_logits():
    g = torch.Generator().manual_seed(1)
    lp = torch.randn(3, 7, 4, dtype=torch.float64, generator=g)
    lq = torch.randn(3, 7, 4, dtype=torch.float64, generator=g)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=lp), torch.distributions.Categorical(logits=lq)
    )
    torch.testing.assert_close(categorical_kl(lp, lq), expected)
    assert (categorical_kl(lp, lq) > 0).all()
    torch.testing.assert_close(categorical_kl(lp, lp + 2.5), torch.zeros(3, 7, dtype=lp.dtype))


def test_architecture_and_initialisation():
    policy = CategoricalMLPPolicy(3, 5, (100, 100), "relu")
    assert [tuple(layer.weight.shape) for layer in policy.layers] == [
        (100, 3),
        (100, 100),
        (5, 100),
    ]
    assert "log_std" not in policy.params()
    assert all((layer.bias == 0).all() for layer in policy.layers)
    bound = math.sqrt(6.0 / (100 + 5))  # Glorot-uniform
    assert policy.layers[-1].weight.abs().max() <= bound
    assert policy(torch.zeros(2, 3)).shape == (2, 5)
    with pytest.raises(ValueError, match="nonlinearity"):
        CategoricalMLPPolicy(3, 5, nonlinearity="sigmoidish")
    with pytest.raises(ValueError, match="num_actions"):
        CategoricalMLPPolicy(3, 0)


def test_forward_by_hand():
    policy = CategoricalMLPPolicy(2, 2, (2,), "relu").double()
    params = {
        "layers.0.weight": torch.tensor([[1.0, -1.0], [2.0, 0.0]], dtype=torch.float64),
        "layers.0.bias": torch.tensor([0.0, -1.0], dtype=torch.float64),
        "layers.1.weight": torch.tensor([[1.0, 1.0], [0.0, -1.0]], dtype=torch.float64),
        "layers.1.bias": torch.tensor([0.5, 0.0], dtype=torch.float64),
    }
    obs = torch.tensor([[1.0, 3.0], [2.0, 1.0]], dtype=torch.float64)
    # h = relu(W0 x + b0): (relu(-2), relu(1)) = (0, 1); (relu(1), relu(3)) = (1, 3)
    # logits = W1 h + b1: (1.5, -1); (4.5, -3)
    expected = torch.tensor([[1.5, -1.0], [4.5, -3.0]], dtype=torch.float64)
    torch.testing.assert_close(policy(obs, params), expected)


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
def test_batched_forward_equals_per_task_forward(nonlinearity):
    policy = CategoricalMLPPolicy(4, 3, (8, 8), nonlinearity).double()
    num_tasks = 5
    params = {
        k: v + 0.1 * torch.randn_like(v) for k, v in replicate(policy.params(), num_tasks).items()
    }
    obs = torch.randn(num_tasks, 6, 7, 4, dtype=torch.float64)
    logits = policy(obs, params)
    assert logits.shape == (num_tasks, 6, 7, 3)
    flat = policy(obs.reshape(num_tasks, 42, 4), params)  # [M, N, obs] as the losses pass it
    torch.testing.assert_close(flat, logits.reshape(num_tasks, 42, 3))
    for i in range(num_tasks):
        single = {k: v[i] for k, v in params.items()}
        torch.testing.assert_close(logits[i], policy(obs[i], single))
    # per-task gradients flow through the batched forward
    actions = torch.randint(0, 3, (num_tasks, 6, 7))
    grads = torch.autograd.grad(
        categorical_log_prob(actions, policy(obs, params)).sum(), list(params.values())
    )
    assert all(g.shape[0] == num_tasks for g in grads)


def test_policy_class_for_action_spaces():
    box = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
    assert policy_class_for(box) is GaussianMLPPolicy
    assert policy_class_for(gym.spaces.Discrete(5)) is CategoricalMLPPolicy
    for space in (
        gym.spaces.Box(-1.0, 1.0, (2, 3)),
        gym.spaces.MultiDiscrete([3, 3]),
        gym.spaces.MultiBinary(4),
    ):
        with pytest.raises(ValueError, match="need a 1-D Box") as err:
            policy_class_for(space)
        assert "\n" not in str(err.value)


def test_policy_class_for_the_registered_families():
    import maml_envs  # noqa: F401  (registers the MAML/ ids)

    assert policy_class_for(gym.make("MAML/TabularMDP-v0").action_space) is CategoricalMLPPolicy
    bandit = gym.make("MAML/BernoulliBandit-K10-v0")
    assert policy_class_for(bandit.action_space) is CategoricalMLPPolicy
    assert policy_class_for(gym.make("MAML/Navigation2D-v0").action_space) is GaussianMLPPolicy


def test_is_task_batched_for_both_policies():
    for policy in (GaussianMLPPolicy(3, 2, (4,)), CategoricalMLPPolicy(3, 2, (4,))):
        assert not is_task_batched(policy.params())
        assert is_task_batched(replicate(policy.params(), 3))
