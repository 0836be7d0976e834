import math

import pytest
import torch

from maml_rl.policy import GaussianMLPPolicy, gaussian_kl, gaussian_log_prob, replicate


def test_log_prob_sums_over_action_dimensions():
    mean = torch.tensor([[0.0, 1.0, -1.0]], dtype=torch.float64)
    log_std = torch.tensor([0.0, math.log(2.0), math.log(0.5)], dtype=torch.float64)
    a = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    expected = 0.0
    for ai, mi, si in zip([1.0, 1.0, 0.0], [0.0, 1.0, -1.0], [1.0, 2.0, 0.5]):
        expected += -((ai - mi) ** 2) / (2 * si**2) - math.log(si) - 0.5 * math.log(2 * math.pi)
    got = gaussian_log_prob(a, mean, log_std)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected, abs=1e-12)
    dist = torch.distributions.Independent(torch.distributions.Normal(mean, log_std.exp()), 1)
    assert got.item() == pytest.approx(dist.log_prob(a).item(), abs=1e-12)


def test_kl_matches_torch_distributions_and_sums():
    g = torch.Generator().manual_seed(1)
    mp, mq = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    sp, sq = torch.randn(4, generator=g) * 0.3, torch.randn(4, generator=g) * 0.3
    p = torch.distributions.Independent(torch.distributions.Normal(mp, sp.exp()), 1)
    q = torch.distributions.Independent(torch.distributions.Normal(mq, sq.exp()), 1)
    expected = torch.distributions.kl_divergence(p, q)
    torch.testing.assert_close(gaussian_kl(mp, sp, mq, sq), expected)
    assert torch.allclose(gaussian_kl(mp, sp, mp, sp), torch.zeros(5), atol=1e-6)


def test_initial_std_and_architecture():
    policy = GaussianMLPPolicy(3, 2, (100, 100), "relu", init_std=1.0)
    assert torch.allclose(policy.log_std.exp(), torch.ones(2))
    assert [tuple(layer.weight.shape) for layer in policy.layers] == [
        (100, 3),
        (100, 100),
        (2, 100),
    ]
    with pytest.raises(ValueError, match="nonlinearity"):
        GaussianMLPPolicy(3, 2, nonlinearity="sigmoidish")
    with pytest.raises(ValueError, match="init_std"):
        GaussianMLPPolicy(3, 2, init_std=0.0)


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
def test_batched_forward_equals_per_task_forward(nonlinearity):
    policy = GaussianMLPPolicy(4, 3, (8, 8), nonlinearity).double()
    num_tasks = 5
    params = {
        k: v + 0.1 * torch.randn_like(v) for k, v in replicate(policy.params(), num_tasks).items()
    }
    obs = torch.randn(num_tasks, 6, 7, 4, dtype=torch.float64)
    mean, log_std = policy(obs, params)
    assert mean.shape == (num_tasks, 6, 7, 3)
    for i in range(num_tasks):
        single = {k: v[i] for k, v in params.items()}
        m_i, s_i = policy(obs[i], single)
        torch.testing.assert_close(mean[i], m_i)
        torch.testing.assert_close(log_std[i].expand_as(mean[i]), s_i.expand_as(m_i))
