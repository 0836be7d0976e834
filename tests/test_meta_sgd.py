"""Meta-SGD (maml_rl.meta_sgd): the adapted parameters by hand, the meta-gradient with respect
to the learned step sizes against finite differences, the TRPO step in (theta, rho), checkpoints
and exact resume, evaluation with the learned step sizes, learning on navigation, the setting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maml_rl.adaptation import inner_loss
from maml_rl.checkpoint import load_checkpoint
from maml_rl.cli import main
from maml_rl.config import ConfigError, load_config
from maml_rl.evaluation import adapt_and_evaluate, sample_test_tasks
from maml_rl.meta_learner import MetaLearner
from maml_rl.meta_sgd import learn_step_sizes, learned_step_sizes, step_sizes_for
from maml_rl.policy import GaussianMLPPolicy, replicate
from maml_rl.report import EvalSettings
from maml_rl.run import load_policy, resume, train
from maml_rl.settings import MetaLearnerSettings
from tests.conftest import (
    logged_numbers,
    post_update_returns,
    progress_rows,
    random_loss_inputs,
    tiny_config,
)

D = torch.float64


def _problem(first_order: bool = False, inner_steps: int = 1):
    """A float64 policy (3 -> 5 -> 2, tanh) with learned step sizes spread around 0.1, its
    learner, inner batches and a post-update batch of 3 tasks."""
    torch.manual_seed(4)
    policy = GaussianMLPPolicy(3, 2, (5,), "tanh").to(D)
    learn_step_sizes(policy, 0.1)
    with torch.no_grad():
        for rho in learned_step_sizes(policy).log_alpha:
            rho.add_(0.5 * torch.randn_like(rho))
    settings = MetaLearnerSettings(inner_lr=0.1, first_order=first_order)
    learner = MetaLearner(policy, settings)
    inner = [random_loss_inputs(3, 8, 3, 2, seed=10 + j) for j in range(inner_steps)]
    post = random_loss_inputs(3, 8, 3, 2, seed=20)
    return policy, learner, inner, post


def test_adapted_parameters_are_theta_minus_alpha_times_the_gradient_elementwise():
    policy, learner, inner, _ = _problem()
    theta = policy.params()
    per_task = replicate({k: v.detach().clone().requires_grad_(True) for k, v in theta.items()}, 3)
    loss = inner_loss(policy, per_task, inner[0]).sum()
    grads = dict(zip(per_task, torch.autograd.grad(loss, list(per_task.values()))))
    alphas = {k: a.detach() for k, a in learned_step_sizes(policy).alphas().items()}
    adapted = learner.adapt(inner)
    for name, value in theta.items():
        by_hand = value.detach() - alphas[name] * grads[name]  # alpha broadcasts over tasks
        assert torch.allclose(adapted[name], by_hand, rtol=0, atol=1e-14), name
    spread = torch.cat([a.reshape(-1) for a in alphas.values()])
    assert spread.min() > 0 and spread.max() / spread.min() > 2  # the test's alphas differ


@pytest.mark.parametrize(("first_order", "inner_steps"), [(False, 2), (True, 1)])
def test_meta_gradient_in_the_step_sizes_matches_finite_differences(first_order, inner_steps):
    """Second order: exact through two inner steps. First order: with one inner step theta'
    = theta - alpha o g(theta) has d theta'/d rho = -alpha o g, no second derivative, so the
    first-order gradient in rho is exact too."""
    policy, learner, inner, post = _problem(first_order, inner_steps)
    _, _, old = learner.surrogate_and_kl(inner, post, None, create_graph=False)

    def surrogate() -> torch.Tensor:
        return learner.surrogate_and_kl(inner, post, old, create_graph=True)[0]

    def value() -> float:
        return float(learner.surrogate_and_kl(inner, post, old, create_graph=False)[0].detach())

    rhos = list(learned_step_sizes(policy).log_alpha)
    grads = torch.autograd.grad(surrogate(), rhos)
    eps = 1e-5  # float64: central-difference error ~1e-11 here
    checked = 0
    for rho, grad in zip(rhos, grads):
        for index in [0, rho.numel() - 1]:
            flat = rho.data.view(-1)
            flat[index] += eps
            up = value()
            flat[index] -= 2 * eps
            down = value()
            flat[index] += eps
            numeric = (up - down) / (2 * eps)
            assert math.isclose(float(grad.view(-1)[index]), numeric, rel_tol=1e-5, abs_tol=1e-9)
            checked += abs(numeric) > 1e-6
    assert checked >= len(rhos)  # most checked entries carry a gradient, so the test can fail


def test_trpo_step_moves_theta_and_the_step_sizes_inside_the_trust_region():
    policy, learner, inner, post = _problem()
    before = {k: v.detach().clone() for k, v in policy.state_dict().items()}
    result = learner.step(inner, post)
    assert result.accepted and 0 < result.kl <= learner.settings.max_kl * 1.0001
    assert result.loss_after < result.loss_before
    moved = {k for k, v in policy.state_dict().items() if not torch.equal(v, before[k])}
    assert any(k.startswith("inner_step_sizes.") for k in moved)
    assert any(k.startswith("layers.") for k in moved)
    with pytest.raises(ValueError, match="Meta-SGD"):
        learner.gradient_and_fvp(inner, post, None)


def test_theta_excludes_the_step_sizes_and_the_schedule_scales_them():
    policy, _, _, _ = _problem()
    assert not any(k.startswith("inner_step_sizes") for k in policy.params())
    alphas = learned_step_sizes(policy).alphas()
    first, later = step_sizes_for(policy, [0.1, 0.05], 0.1, detach=True)
    for name, a in alphas.items():
        assert torch.equal(first[name], a.detach()) and not first[name].requires_grad
        assert torch.allclose(later[name], a.detach() / 2, rtol=1e-15, atol=0)
    plain = GaussianMLPPolicy(3, 2, (5,), "tanh")
    assert step_sizes_for(plain, [0.1, 0.05], 0.1) == [0.1, 0.05]


# -- runs ---------------------------------------------------------------------------------------
def _config(**overrides):
    sizes = dict(meta_batch_size=6, episodes_per_task=6, hidden_sizes=[32, 32], num_iterations=3)
    return tiny_config(**{**sizes, "meta_sgd": True, **overrides})


@pytest.mark.parametrize("algorithm", ["maml-trpo", "maml-ppo"])
def test_resume_is_exact_and_checkpoints_carry_the_step_sizes(tmp_path, algorithm):
    full = train(_config(algorithm=algorithm), tmp_path / "full", stdout=False)

    def stop_after_two(trainer, _result):
        if trainer.iteration == 2:
            raise KeyboardInterrupt

    run = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(_config(algorithm=algorithm), run, stdout=False, callbacks=[stop_after_two])
    resume(run, stdout=False)
    final, resumed = load_checkpoint(full), load_checkpoint(run)
    keys = [k for k in final["policy"] if k.startswith("inner_step_sizes.")]
    assert len(keys) == 7  # one per policy parameter: 3 layers x (weight, bias), log_std
    assert all(torch.equal(final["policy"][k], resumed["policy"][k]) for k in final["policy"])
    assert logged_numbers(progress_rows(full)) == logged_numbers(progress_rows(run))
    row = progress_rows(run)[-1]
    low, mean, high = (float(row[f"train/inner_lr_{s}"]) for s in ("min", "mean", "max"))
    assert 0 < low <= mean <= high and low < high  # learned: no longer all 0.1
    policy, _ = load_policy(run)
    loaded = learned_step_sizes(policy)
    assert loaded is not None
    assert torch.equal(loaded.log_alpha[0], final["policy"]["inner_step_sizes.log_alpha.0"])


def test_evaluation_adapts_with_the_learned_step_sizes(tmp_path):
    """A Meta-SGD policy whose step sizes are all 0.3 adapts as the same theta without learned
    step sizes evaluated with alpha = 0.3; spread step sizes adapt differently."""
    config = _config(num_iterations=1)
    train(config, tmp_path / "run", stdout=False)
    policy, config = load_policy(tmp_path / "run")
    plain = GaussianMLPPolicy(2, 2, (32, 32))
    plain.load_state_dict({k: v for k, v in policy.state_dict().items() if "inner_step" not in k})
    with torch.no_grad():
        for rho in learned_step_sizes(policy).log_alpha:
            rho.fill_(math.log(0.3))
    tasks = sample_test_tasks(config, 3, seed=0)
    settings = EvalSettings(num_tasks=3, num_steps=2, env_steps=300)
    learned, _, _, history = adapt_and_evaluate(policy, config, tasks, settings, keep=True)
    same = EvalSettings(num_tasks=3, num_steps=2, env_steps=300, alpha=0.3)
    reference, _, _, ref_history = adapt_and_evaluate(plain, config, tasks, same, keep=True)
    for name in plain.params():
        assert torch.allclose(history[2][name], ref_history[2][name], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(learned, reference, rtol=1e-3)
    with torch.no_grad():
        for rho in learned_step_sizes(policy).log_alpha:
            rho.add_(torch.randn_like(rho))
    spread, _, _, _ = adapt_and_evaluate(policy, config, tasks, settings)
    assert np.array_equal(spread[0], learned[0]) and not np.allclose(spread[1:], learned[1:])


NAVIGATION_MARGIN = 20.0
"""Post-update return gained on navigation by Meta-SGD-TRPO (mean of the last 3 of 15
iterations over the first 3; 10 tasks x 10 episodes, seed 1). Measured: +56.9."""


def test_short_navigation_training_improves_post_adaptation_return(tmp_path):
    config = _config(num_iterations=15, meta_batch_size=10, episodes_per_task=10, seed=1)
    posts = post_update_returns(config, tmp_path / "learn")
    assert np.mean(posts[-3:]) > np.mean(posts[:3]) + NAVIGATION_MARGIN, posts


# -- the setting --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["meta_sgd=true", "cg_subsample=0.5"], "'cg_subsample'.*meta_sgd=true"),
        (["meta_sgd=true", "num_inner_steps=0"], "'meta_sgd'.*num_inner_steps >= 1"),
        (["meta_sgd=yes please"], "'meta_sgd'"),
    ],
)
def test_bad_meta_sgd_settings_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_train_help_names_meta_sgd_and_its_paper(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "meta_sgd [False]: Meta-SGD (Li et al. 2017)" in out
