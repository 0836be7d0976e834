"""The action distributions against hand-computed values and autograd."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from maml_rl.distributions import Categorical, DiagGaussian, distribution_for, gaussian_noise
from maml_rl.policy import CategoricalMLPPolicy, GaussianMLPPolicy


def test_gaussian_log_prob_and_kl_closed_forms():
    d = DiagGaussian(2)
    mean = torch.tensor([0.0, 1.0], dtype=torch.float64)
    log_std = torch.tensor([0.0, math.log(2.0)], dtype=torch.float64)
    a = torch.tensor([1.0, 1.0], dtype=torch.float64)
    # dim 0: -1/2 - 0 - log(2 pi)/2; dim 1: 0 - log 2 - log(2 pi)/2
    expected = -0.5 - math.log(2.0) - math.log(2.0 * math.pi)
    assert d.log_prob(a, (mean, log_std)).item() == pytest.approx(expected, abs=1e-12)
    # KL(N(0,1) || N(1,4)) per dim 0: log 2 + (1 + 1) / 8 - 1/2; dim 1 (equal): 0
    q = (
        torch.tensor([1.0, 1.0], dtype=torch.float64),
        torch.tensor([math.log(2.0)] * 2, dtype=torch.float64),
    )
    p = (torch.tensor([0.0, 1.0], dtype=torch.float64), log_std)
    assert d.kl(p, q).item() == pytest.approx(math.log(2.0) + 0.25 - 0.5, abs=1e-12)


def test_categorical_log_prob_and_kl_closed_forms():
    d = Categorical(2)
    logits_p = torch.tensor([0.0, 0.0], dtype=torch.float64)  # p = (1/2, 1/2)
    logits_q = torch.tensor([math.log(3.0), 0.0], dtype=torch.float64)  # q = (3/4, 1/4)
    assert d.log_prob(torch.tensor(1), logits_q).item() == pytest.approx(math.log(0.25))
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert d.kl(logits_p, logits_q).item() == pytest.approx(expected, abs=1e-12)


def test_gaussian_sample_from_noise_is_mean_plus_std_times_noise():
    d = DiagGaussian(2)
    mean, log_std = torch.tensor([[1.0, -2.0]]), torch.tensor([math.log(0.5), math.log(3.0)])
    eps = torch.tensor([[2.0, -1.0]])
    assert torch.equal(d.sample_from_noise((mean, log_std), eps), torch.tensor([[2.0, -5.0]]))
    assert torch.equal(d.mode((mean, log_std)), mean)
    noise = d.noise(3, 4, seed=7)
    expected = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(7))
    assert noise.dtype == torch.float32 and torch.equal(noise, expected)


def test_categorical_sample_from_noise_is_gumbel_max():
    d = Categorical(3)
    logits = torch.tensor([[0.0, 1.0, 0.5], [2.0, 0.0, 0.0]])
    g = torch.tensor([[1.5, 0.0, 0.0], [0.0, 0.0, 2.5]])  # sums: (1.5, 1, .5), (2, 0, 2.5)
    assert d.sample_from_noise(logits, g).tolist() == [0, 2]
    assert d.mode(logits).tolist() == [1, 0]
    u = torch.rand(2, 5, 3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(d.noise(2, 5, seed=3), -torch.log(-torch.log(u)))


def test_numpy_samples():
    d = DiagGaussian(1)
    out = (torch.tensor([[[1.0]]]), torch.tensor([[[math.log(2.0)]]]))
    eps = np.random.default_rng(0).standard_normal((1, 1)).astype(np.float32)
    got = d.sample_numpy(out, np.random.default_rng(0))
    assert got == pytest.approx(1.0 + 2.0 * eps)
    assert d.sample_numpy(out, None).tolist() == [[1.0]]
    c = Categorical(2)
    assert c.sample_numpy(torch.tensor([[0.0, 1.0]]), None).tolist() == [1]


def test_take_tasks_keeps_a_shared_log_std():
    d = DiagGaussian(2)
    mean, log_std = torch.arange(12.0).reshape(3, 2, 2), torch.zeros(2)
    got_mean, got_std = d.take_tasks((mean, log_std), torch.tensor([2, 0]))
    assert torch.equal(got_mean, mean[[2, 0]]) and got_std is log_std
    batched = torch.arange(6.0).reshape(3, 1, 2)
    assert torch.equal(d.take_tasks((mean, batched), torch.tensor([1]))[1], batched[[1]])


def _kl_hessian(kl, output):
    """Autograd's Hessian of sum KL(p_fixed || p(output)) in output, at output = p_fixed."""
    return torch.autograd.functional.hessian(kl, output)


def test_gaussian_fisher_in_outputs_is_the_kl_hessian():
    torch.manual_seed(0)
    mean = torch.randn(1, 1, 2, dtype=torch.float64)
    log_std = torch.randn(1, 2, dtype=torch.float64)
    d = DiagGaussian(2)
    head = d.head(torch.randn(1, 1, 2, dtype=torch.float64), mean, {"log_std": log_std})

    def kl(m, s):
        return d.kl((mean, log_std.unsqueeze(1)), (m, s.unsqueeze(1))).sum()

    (h_mm, h_ms), (_, h_ss) = torch.autograd.functional.hessian(kl, (mean, log_std))
    for i in range(2):
        e = torch.zeros(1, 1, 2, dtype=torch.float64)
        e[..., i] = 1.0
        f_out, f_extra = head.fisher(e, torch.zeros(1, 1, 2, dtype=torch.float64))
        assert torch.allclose(f_out.reshape(2), h_mm.reshape(2, 2)[i])
        f_out, f_extra = head.fisher(torch.zeros_like(e), e)
        assert torch.allclose(f_extra.reshape(2), h_ss.reshape(2, 2)[i])
        assert torch.allclose(h_ms.reshape(2, 2)[i], torch.zeros(2, dtype=torch.float64))


def test_categorical_fisher_in_outputs_is_the_kl_hessian():
    torch.manual_seed(1)
    logits = torch.randn(1, 1, 4, dtype=torch.float64)
    d = Categorical(4)
    head = d.head(torch.tensor([[2]]), logits, {})
    h = _kl_hessian(lambda z: d.kl(logits, z).sum(), logits).reshape(4, 4)
    fisher = torch.stack(
        [
            head.fisher(torch.eye(4, dtype=torch.float64)[i].view(1, 1, 4))[0].reshape(4)
            for i in range(4)
        ]
    )
    assert torch.allclose(fisher, h)
    hess_logp = torch.autograd.functional.hessian(
        lambda z: d.log_prob(torch.tensor([[2]]), z).sum(), logits
    ).reshape(4, 4)
    assert torch.allclose(
        head.hessian(torch.eye(4, dtype=torch.float64).view(4, 1, 4))[0].reshape(4, 4), hess_logp
    )


def test_factory_and_policies_own_their_distribution():
    box = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    assert isinstance(distribution_for(box), DiagGaussian) and distribution_for(box).act_dim == 3
    assert distribution_for(gym.spaces.Discrete(4)).num_actions == 4
    with pytest.raises(ValueError, match="need a 1-D Box"):
        distribution_for(gym.spaces.MultiBinary(2))
    assert isinstance(GaussianMLPPolicy(2, 3, (4,)).distribution, DiagGaussian)
    assert isinstance(CategoricalMLPPolicy(2, 3, (4,)).distribution, Categorical)
    assert torch.equal(gaussian_noise(2, 1, 3, 5), DiagGaussian(3).noise(2, 1, 5))
