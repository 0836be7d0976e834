import numpy as np
import pytest
import torch

from maml_rl.advantages import (
    baseline_features,
    discounted_returns,
    fit_linear_baseline,
    gae,
    normal_equations,
    normalize_per_task,
)

D = torch.float64


def test_discounted_returns_hand_computed_with_padding():
    rewards = torch.tensor([[1.0, 2.0], [2.0, 1.0], [3.0, 0.0]], dtype=D)  # [T=3, 2 episodes]
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]], dtype=D)
    got = discounted_returns(rewards, mask, gamma=0.5)
    expected = torch.tensor(
        [[1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 1], [2 + 0.5 * 3, 1.0], [3.0, 0.0]], dtype=D
    )
    torch.testing.assert_close(got, expected)


def test_gae_hand_computed():
    rewards = torch.tensor([[1.0], [2.0], [3.0], [9.0]], dtype=D)
    values = torch.tensor([[0.5], [1.0], [1.5], [0.0]], dtype=D)
    mask = torch.tensor([[1.0], [1.0], [1.0], [0.0]], dtype=D)
    g, lam = 0.9, 0.5
    d2 = 3.0 - 1.5
    d1 = 2.0 + g * 1.5 - 1.0
    d0 = 1.0 + g * 1.0 - 0.5
    a2 = d2
    a1 = d1 + g * lam * a2
    a0 = d0 + g * lam * a1
    expected = torch.tensor([[a0], [a1], [a2], [0.0]], dtype=D)
    torch.testing.assert_close(gae(rewards, values, mask, g, lam), expected)
    # lambda = 1: advantages are returns minus values
    ret = discounted_returns(rewards, mask, g)
    torch.testing.assert_close(gae(rewards, values, mask, g, 1.0), (ret - values) * mask)


def test_baseline_features_layout():
    obs = torch.tensor([[[20.0, -1.0]], [[0.5, 2.0]]], dtype=D)  # [T=2, 1, 2]
    mask = torch.tensor([[1.0], [0.0]], dtype=D)
    phi = baseline_features(obs, mask)
    expected0 = [10.0, -1.0, 100.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    torch.testing.assert_close(phi[0, 0], torch.tensor(expected0, dtype=D))
    torch.testing.assert_close(phi[1, 0], torch.zeros(8, dtype=D))  # padded step
    phi_valid = baseline_features(obs, torch.ones(2, 1, dtype=D))
    t = 0.01
    expected1 = [0.5, 2.0, 0.25, 4.0, t, t**2, t**3, 1.0]
    torch.testing.assert_close(phi_valid[1, 0], torch.tensor(expected1, dtype=D))


def test_linear_baseline_matches_numpy_lstsq_per_task():
    rng = np.random.default_rng(0)
    steps, tasks, episodes, obs_dim = 6, 3, 4, 2
    obs = torch.tensor(rng.normal(size=(steps, tasks, episodes, obs_dim)))
    mask = torch.ones(steps, tasks, episodes, dtype=D)
    mask[4:, 1, 0] = 0.0  # one shorter episode
    returns = torch.tensor(rng.normal(size=(steps, tasks, episodes))) * mask
    phi = baseline_features(obs, mask)
    w = fit_linear_baseline(phi, returns, reg_coeff=1e-5)
    for m in range(tasks):
        rows = mask[:, m].reshape(-1) > 0
        x = phi[:, m].reshape(-1, phi.shape[-1])[rows].numpy()
        y = returns[:, m].reshape(-1)[rows].numpy()
        a = x.T @ x + 1e-5 * np.eye(x.shape[1])
        expected = np.linalg.lstsq(a, x.T @ y, rcond=None)[0]
        np.testing.assert_allclose(w[m].numpy(), expected, rtol=1e-6, atol=1e-8)


def test_linear_baseline_retries_with_larger_ridge_when_not_finite():
    phi = torch.zeros(3, 1, 1, 2, dtype=D)
    phi[..., 0] = torch.tensor([1e200, 1e200, 1e200], dtype=D).reshape(3, 1, 1)
    returns = torch.ones(3, 1, 1, dtype=D)
    w = fit_linear_baseline(phi, returns)  # X^T X overflows: every retry fails, weights stay 0
    assert torch.equal(w, torch.zeros_like(w))


def test_normalize_per_task_uses_std_over_valid_steps():
    adv = torch.tensor([[[1.0, 2.0], [10.0, 0.0]], [[3.0, 99.0], [20.0, 30.0]]], dtype=D)
    mask = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [1.0, 1.0]]], dtype=D)
    out = normalize_per_task(adv, mask, eps=0.0)
    task0 = np.array([1.0, 2.0, 3.0])
    task1 = np.array([10.0, 0.0, 20.0, 30.0])
    np.testing.assert_allclose(
        out[:, 0][mask[:, 0] > 0].numpy(), (np.array([1.0, 2.0, 3.0]) - task0.mean()) / task0.std()
    )
    np.testing.assert_allclose(
        out[:, 1].reshape(-1).numpy(),
        (np.array([10.0, 0.0, 20.0, 30.0]) - task1.mean()) / task1.std(),
    )
    assert out[1, 0, 1] == 0.0
    with pytest.raises(AssertionError):  # a port divided by the variance: not the same
        np.testing.assert_allclose(
            out[:, 1].reshape(-1).numpy(), (task1 - task1.mean()) / task1.var()
        )


def test_linear_baseline_survives_a_change_of_torch_threads_at_ant_size():
    """254 features (the rllab ant's 125-d observations), 40 tasks: torch's batched LU solve
    raised "Pivots given to lu_solve must all be greater or equal to 1" on every call after
    set_num_threads(1) and back (which any code in the process may do)."""
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(20, 40, 10, 254, generator=gen, dtype=D)
    returns = torch.randn(20, 40, 10, generator=gen, dtype=D)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    _ = torch.randn(8, 8) @ torch.randn(8, 8)
    torch.set_num_threads(max(2, threads))
    try:
        weights = fit_linear_baseline(features, returns)
    finally:
        torch.set_num_threads(threads)
    x = features.numpy()
    for task in range(40):
        phi = x[:, task].reshape(-1, 254)
        y = returns.numpy()[:, task].reshape(-1)
        expected = np.linalg.solve(phi.T @ phi + 1e-5 * np.eye(254), phi.T @ y)
        np.testing.assert_allclose(weights[task].numpy(), expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    ("steps", "tasks", "episodes", "features"),
    [
        (100, 20, 20, 6),  # navigation: 2-d observations
        (200, 40, 20, 44),  # rllab half-cheetah: 20-d
        (30, 40, 10, 254),  # rllab ant: 125-d (fewer steps and episodes)
        (7, 3, 5, 1),
    ],
)
def test_normal_equations_equal_the_einsums_bit_for_bit(steps, tasks, episodes, features):
    """X^T X and X^T y from the one contiguous copy equal the einsums the baseline used before,
    exactly (results of a run must not change), on float32 features with padded zero rows."""
    gen = torch.Generator().manual_seed(features)
    obs = torch.randn(steps, tasks, episodes, max(1, (features - 4) // 2), generator=gen) * 3
    lengths = torch.randint(1, steps + 1, (tasks, episodes), generator=gen)
    mask = (torch.arange(steps)[:, None, None] < lengths).float()
    phi = baseline_features(obs, mask)[..., :features]
    returns = torch.randn(steps, tasks, episodes, generator=gen) * mask
    x, y = phi.double(), returns.double()
    xtx, xty = normal_equations(phi, returns)
    assert torch.equal(xtx, torch.einsum("tmkf,tmkg->mfg", x, x))
    assert torch.equal(xty, torch.einsum("tmkf,tmk->mf", x, y))


@pytest.mark.slow
def test_normal_equations_equal_the_einsums_at_the_ant_batch_size():
    """The rllab ant's whole batch (200 steps x 40 tasks x 20 episodes x 254 features)."""
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(200, 40, 20, 125, generator=gen) * 3
    mask = torch.ones(200, 40, 20)
    mask[150:, :3] = 0.0
    phi = baseline_features(obs, mask)
    returns = torch.randn(200, 40, 20, generator=gen) * mask
    x, y = phi.double(), returns.double()
    xtx, xty = normal_equations(phi, returns)
    assert torch.equal(xtx, torch.einsum("tmkf,tmkg->mfg", x, x))
    assert torch.equal(xty, torch.einsum("tmkf,tmk->mf", x, y))
