"""Meta-SGD (maml_rl.meta_sgd): the adapted parameters by hand, the meta-gradient with respect
to the learned step sizes against finite differences, the hand-written gradient and Fisher
products in (theta, rho) against autograd, the TRPO step in (theta, rho), checkpoints
and exact resume, evaluation with the learned step sizes, learning on navigation, the setting."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from maml_rl.adaptation import adapt_steps, inner_loss
from maml_rl.batch import task_mean
from maml_rl.checkpoint import load_checkpoint, save_checkpoint
from maml_rl.cli import main
from maml_rl.config import ConfigError, load_config
from maml_rl.evaluation import adapt_and_evaluate, sample_test_tasks
from maml_rl.fisher import AdaptationCurvature, subsample
from maml_rl.meta_optimizers import make_meta_optimizer
from maml_rl.meta_sgd import STATE_PREFIX, InnerStepSizes, MetaPolicy, step_sizes_for
from maml_rl.policy import CategoricalMLPPolicy, GaussianMLPPolicy, replicate
from maml_rl.report import EvalSettings
from maml_rl.run import load_policy, resume, train
from maml_rl.settings import MetaLearnerSettings
from maml_rl.trainer import MAMLTrainer
from maml_rl.trpo import flatten, hessian_vector_product
from tests.conftest import (
    logged_numbers,
    post_update_returns,
    progress_rows,
    random_loss_inputs,
    tiny_config,
)

D = torch.float64


def _spread(learned: InnerStepSizes) -> InnerStepSizes:
    """``learned`` with rho moved by 0.5 N(0, 1) per element (step sizes that differ)."""
    with torch.no_grad():
        for rho in learned.log_alpha:
            rho.add_(0.5 * torch.randn_like(rho))
    return learned


def _problem(first_order: bool = False, inner_steps: int = 1):
    """A float64 policy (3 -> 5 -> 2, tanh) with learned step sizes spread around 0.1, its
    learner, inner batches and a post-update batch of 3 tasks."""
    torch.manual_seed(4)
    policy = GaussianMLPPolicy(3, 2, (5,), "tanh").to(D)
    learned = _spread(InnerStepSizes(policy.params(), 0.1))
    settings = MetaLearnerSettings(inner_lr=0.1, first_order=first_order)
    learner = make_meta_optimizer(policy, settings, 1, learned)
    inner = [random_loss_inputs(3, 8, 3, 2, seed=10 + j) for j in range(inner_steps)]
    post = random_loss_inputs(3, 8, 3, 2, seed=20)
    return policy, learner, inner, post


def test_adapted_parameters_are_theta_minus_alpha_times_the_gradient_elementwise():
    policy, learner, inner, _ = _problem()
    theta = policy.params()
    per_task = replicate({k: v.detach().clone().requires_grad_(True) for k, v in theta.items()}, 3)
    loss = inner_loss(policy, per_task, inner[0]).sum()
    grads = dict(zip(per_task, torch.autograd.grad(loss, list(per_task.values()))))
    alphas = {k: a.detach() for k, a in learner.adaptation.inner_step_sizes.alphas().items()}
    adapted = learner.adaptation.adapt(inner)
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
    _, learner, inner, post = _problem(first_order, inner_steps)
    _, _, old = learner.surrogate_and_kl(inner, post, None, create_graph=False)

    def surrogate() -> torch.Tensor:
        return learner.surrogate_and_kl(inner, post, old, create_graph=True)[0]

    def value() -> float:
        return float(learner.surrogate_and_kl(inner, post, old, create_graph=False)[0].detach())

    rhos = list(learner.adaptation.inner_step_sizes.log_alpha)
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
    meta = MetaPolicy(policy, learner.adaptation.inner_step_sizes)
    before = {k: v.detach().clone() for k, v in meta.state_dict().items()}
    result = learner.step(inner, post)
    assert result.accepted and 0 < result.kl <= learner.settings.max_kl * 1.0001
    assert result.loss_after < result.loss_before
    moved = {k for k, v in meta.state_dict().items() if not torch.equal(v, before[k])}
    assert any(k.startswith(STATE_PREFIX) for k in moved)
    assert any(k.startswith("layers.") for k in moved)


def _curvature_case(policy_kind, objective, first_order, inner_steps):
    """A float64 policy with spread learned step sizes, 4 tasks of 3 steps x 2 episodes."""
    torch.manual_seed(7)
    if policy_kind == "categorical":
        policy = CategoricalMLPPolicy(3, 4, (6, 5), "relu").to(D)
    else:
        policy = GaussianMLPPolicy(3, 2, (6, 5), "tanh", init_std=0.7).to(D)
    learned = _spread(InnerStepSizes(policy.params(), 0.3))

    def data(seed):
        batch = random_loss_inputs(4, 6, 3, 2, seed=seed)._replace(episodes=2)
        if policy_kind == "categorical":
            actions = torch.randint(4, (4, 6), generator=torch.Generator().manual_seed(seed))
            batch = batch._replace(actions=actions)
        return batch

    settings = MetaLearnerSettings(inner_lr=0.3, inner_objective=objective, first_order=first_order)
    return (
        policy,
        make_meta_optimizer(policy, settings, 1, learned),
        [data(s) for s in range(inner_steps)],
        data(99),
    )


CURVATURE_CASES = [
    ("gaussian", "reinforce", False, 1),
    ("gaussian", "reinforce", False, 2),
    ("gaussian", "lvc", False, 2),
    ("gaussian", "dice", False, 1),
    ("gaussian", "reinforce", True, 1),
    ("gaussian", "lvc", True, 2),
    ("categorical", "reinforce", False, 2),
    ("categorical", "reinforce", True, 1),
]


@pytest.mark.parametrize(
    ("policy_kind", "objective", "first_order", "inner_steps"), CURVATURE_CASES
)
def test_hand_written_gradient_and_fisher_product_in_theta_and_rho_equal_autograd(
    policy_kind, objective, first_order, inner_steps
):
    """The meta-step's passes by hand (:class:`maml_rl.fisher.AdaptationCurvature` with
    per-parameter step sizes) against autograd through the adaptation in (theta, rho): the
    surrogate's gradient and the double-backward KL Hessian, including the rho-rho and
    theta-rho blocks (d theta'/d rho = -alpha o g per step)."""
    policy, learner, inner, post = _curvature_case(policy_kind, objective, first_order, inner_steps)
    loss, kl, _ = learner.surrogate_and_kl(inner, post)
    params = learner.adaptation.meta_parameters()
    expected_gradient = flatten(torch.autograd.grad(loss, params, retain_graph=True))
    exact = hessian_vector_product(kl, params, damping=learner.settings.cg_damping)
    value, gradient, fvp, _ = learner.gradient_and_fvp(inner, post, None)
    assert math.isclose(float(value), float(loss.detach()), rel_tol=1e-12)
    size = sum(p.numel() for p in params)
    assert gradient.shape == (size,)
    theta_size = sum(p.numel() for p in policy.params().values())
    assert expected_gradient[theta_size:].abs().max() > 1e-6  # rho's gradient is not zero
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-10, atol=1e-12)
    for seed in range(3):
        v = torch.randn(size, dtype=D, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(fvp(v), exact(v), rtol=1e-10, atol=1e-12)
    rho_only = torch.zeros(size, dtype=D)
    rho_only[theta_size:] = 1.0
    assert exact(rho_only)[:theta_size].abs().max() > 1e-6  # the theta-rho block is exercised


@pytest.mark.parametrize("group_size", [1, 3])
def test_task_groups_sum_the_rho_parts_too(group_size):
    policy, learner, inner, post = _curvature_case("gaussian", "lvc", False, 2)
    theta = policy.params()
    adapted, steps = adapt_steps(
        policy, theta, inner, learner.adaptation.step_sizes(2), "lvc", create_graph=False
    )
    whole = AdaptationCurvature(policy, theta, adapted, steps, post)
    grouped = AdaptationCurvature(policy, theta, adapted, steps, post, group_size=group_size)
    v = torch.randn(2 * sum(p.numel() for p in theta.values()), dtype=D)
    torch.testing.assert_close(
        grouped.fisher_vector_product(v, 0.01), whole.fisher_vector_product(v, 0.01)
    )
    torch.testing.assert_close(
        grouped.surrogate_gradient(post.advantages), whole.surrogate_gradient(post.advantages)
    )


def test_meta_step_by_hand_equals_the_exact_reference():
    """A whole TRPO meta-step in (theta, rho) through two inner steps: hand-written products
    (``hvp=gauss_newton``) and autograd's (``hvp=exact``) take the same step."""
    updates = []
    for hvp in ("gauss_newton", "exact"):
        policy, problem, _, _ = _problem()
        inner = [random_loss_inputs(3, 40, 3, 2, seed=10 + j) for j in range(2)]
        post = random_loss_inputs(3, 40, 3, 2, seed=20)
        settings = MetaLearnerSettings(inner_lr=0.1, hvp=hvp)
        learner = make_meta_optimizer(policy, settings, 1, problem.adaptation.inner_step_sizes)
        params = learner.adaptation.meta_parameters()
        before = flatten([p.detach().clone() for p in params])
        result = learner.step(inner, post)
        assert result.accepted and 0 < result.kl <= learner.settings.max_kl * 1.0001
        updates.append(flatten([p.detach() for p in params]) - before)
    theta_size = sum(p.numel() for p in policy.params().values())
    assert updates[0][theta_size:].abs().max() > 1e-4  # the step sizes move
    torch.testing.assert_close(updates[0], updates[1], rtol=1e-8, atol=1e-12)


def test_the_step_sizes_live_beside_theta_and_the_schedule_scales_them():
    policy, learner, _, _ = _problem()
    learned = learner.adaptation.inner_step_sizes
    assert list(policy.params()) == [k for k, _ in policy.named_parameters()]  # theta: all
    assert not any(p is rho for p in policy.parameters() for rho in learned.log_alpha)
    rhos = list(learned.log_alpha)
    assert learner.adaptation.meta_parameters() == [*policy.params().values(), *rhos]
    assert [r.shape for r in rhos] == [p.shape for p in policy.params().values()]
    alphas = learned.alphas()
    first, later = step_sizes_for(learned, [0.1, 0.05], 0.1, detach=True)
    for name, a in alphas.items():
        assert torch.equal(first[name], a.detach()) and not first[name].requires_grad
        assert torch.allclose(later[name], a.detach() / 2, rtol=1e-15, atol=0)
    assert step_sizes_for(None, [0.1, 0.05], 0.1) == [0.1, 0.05]


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
    meta, _ = load_policy(run)
    assert meta.step_sizes is not None and "inner_step_sizes" not in dict(
        meta.policy.named_modules()
    )
    assert torch.equal(
        meta.step_sizes.log_alpha[0], final["policy"]["inner_step_sizes.log_alpha.0"]
    )


OLD_RUNS = Path(__file__).parent / "data" / "main_checkpoints"
"""Meta-SGD runs written when rho was a submodule of the policy (tests/test_meta_optimizers.py)."""


@pytest.mark.parametrize("name", ["ppo_meta_sgd", "trpo_meta_sgd"])
def test_a_checkpoint_of_rho_inside_the_policy_loads_beside_theta_and_round_trips(tmp_path, name):
    """A checkpoint written when rho was the policy's ``inner_step_sizes`` submodule loads into
    the policy (theta alone) and its own InnerStepSizes with the same alpha; a trainer restoring
    it writes the same ``policy`` (and Adam) entries back, and those load again to the same."""
    old = load_checkpoint(OLD_RUNS / name)
    meta, config = load_policy(OLD_RUNS / name)
    assert config.meta_sgd and meta.step_sizes is not None
    theta_keys = [k for k in old["policy"] if not k.startswith(STATE_PREFIX)]
    assert list(meta.policy.state_dict()) == theta_keys  # no rho inside the policy
    alphas = meta.step_sizes.alphas()
    assert list(alphas) == list(meta.policy.params())
    for i, (key, alpha) in enumerate(alphas.items()):
        assert torch.equal(alpha, old["policy"][f"{STATE_PREFIX}log_alpha.{i}"].exp()), key
        assert torch.equal(meta.policy.params()[key], old["policy"][key])
    trainer = MAMLTrainer(config)
    try:
        trainer.load_state_dict(old)
        saved = trainer.state_dict()
    finally:
        trainer.close()
    assert list(saved["policy"]) == list(old["policy"])
    assert all(torch.equal(saved["policy"][k], v) for k, v in old["policy"].items())
    if "meta_optimizer" in old:  # Adam's moments: theta's, then rho's, as before
        moments = zip(
            saved["meta_optimizer"]["adam_exp_avg"], old["meta_optimizer"]["adam_exp_avg"]
        )
        assert all(torch.equal(a, b) for a, b in moments)
    save_checkpoint(tmp_path / "checkpoint.pt", saved)
    again, _ = load_policy(tmp_path)
    assert all(torch.equal(a, again.step_sizes.alphas()[k]) for k, a in alphas.items())


def test_a_meta_policy_loads_only_the_state_of_its_layout():
    policy = GaussianMLPPolicy(3, 2, (5,), "tanh")
    learned = MetaPolicy.fresh(policy, 0.1)
    state = learned.state_dict()
    assert [k for k in state if k.startswith(STATE_PREFIX)] == [
        f"{STATE_PREFIX}log_alpha.{i}" for i in range(len(policy.params()))
    ]
    with pytest.raises(KeyError, match="without learned step sizes"):
        MetaPolicy(GaussianMLPPolicy(3, 2, (5,), "tanh")).load_state_dict(state)
    with pytest.raises(RuntimeError, match="Missing key"):
        MetaPolicy.fresh(GaussianMLPPolicy(3, 2, (5,), "tanh"), 0.1).load_state_dict(
            policy.state_dict()
        )
    assert MetaPolicy.fresh(policy, None).step_sizes is None


def test_evaluation_adapts_with_the_learned_step_sizes(tmp_path):
    """A Meta-SGD policy whose step sizes are all 0.3 adapts as the same theta without learned
    step sizes evaluated with alpha = 0.3; spread step sizes adapt differently."""
    config = _config(num_iterations=1)
    train(config, tmp_path / "run", stdout=False)
    meta, config = load_policy(tmp_path / "run")
    policy, rho = meta.policy, meta.step_sizes
    with torch.no_grad():
        for log_alpha in rho.log_alpha:
            log_alpha.fill_(math.log(0.3))
    tasks = sample_test_tasks(config, 3, seed=0)
    settings = EvalSettings(num_tasks=3, num_steps=2, env_steps=300)
    learned, _, _, history = adapt_and_evaluate(policy, config, tasks, settings, True, learned=rho)
    same = EvalSettings(num_tasks=3, num_steps=2, env_steps=300, alpha=0.3)
    reference, _, _, ref_history = adapt_and_evaluate(policy, config, tasks, same, keep=True)
    for name in policy.params():
        assert torch.allclose(history[2][name], ref_history[2][name], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(learned, reference, rtol=1e-3)
    with torch.no_grad():
        for log_alpha in rho.log_alpha:
            log_alpha.add_(torch.randn_like(log_alpha))
    spread, _, _, _ = adapt_and_evaluate(policy, config, tasks, settings, learned=rho)
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


@pytest.mark.parametrize(("objective", "first_order"), [("reinforce", False), ("lvc", True)])
def test_subsampled_curvature_in_theta_and_rho_equals_autograd_on_the_subsample(
    objective, first_order
):
    """``cg_subsample`` < 1 with learned step sizes: the product is the KL Hessian on the same
    random columns (the post-update batch's and the inner batch's, drawn in that order from
    seed 0), through the inner step's Jacobian on the inner subsample, at the full batch's
    theta'. The autograd reference: theta'(theta, rho) = theta'_full + (theta - alpha o
    g_sub(theta)) - (its value at the current point), so its Jacobian is the subsample's."""
    fraction = 0.5
    policy, case, inner, post = _curvature_case("gaussian", objective, first_order, 1)
    learned = case.adaptation.inner_step_sizes
    settings = MetaLearnerSettings(
        inner_lr=0.3, inner_objective=objective, first_order=first_order, cg_subsample=fraction
    )
    learner = make_meta_optimizer(policy, settings, 1, learned)
    _, _, fvp, _ = learner.gradient_and_fvp(inner, post, None)

    generator = torch.Generator().manual_seed(0)
    post_sub = subsample(post, fraction, generator)
    inner_sub = subsample(inner[0], fraction, generator)
    theta = policy.params()
    alphas = learner.adaptation.inner_step_sizes.alphas()
    full = learner.adaptation.adapt_detached(inner)

    def adapted_on_subsample() -> dict[str, torch.Tensor]:
        per_task = replicate(theta, 4)
        loss = inner_loss(policy, per_task, inner_sub, objective).sum()
        grads = torch.autograd.grad(loss, list(per_task.values()), create_graph=not first_order)
        return {k: p - alphas[k] * g for (k, p), g in zip(per_task.items(), grads)}

    moving = adapted_on_subsample()
    at_point = {k: v.detach() for k, v in moving.items()}
    adapted = {k: full[k] + moving[k] - at_point[k] for k in full}
    output = policy(post_sub.observations, adapted)
    old = tuple(x.detach() for x in output) if isinstance(output, tuple) else output.detach()
    kl = task_mean(policy.kl(old, output), post_sub.mask).mean()
    params = learner.adaptation.meta_parameters()
    exact = hessian_vector_product(kl, params, damping=settings.cg_damping)
    size = sum(p.numel() for p in params)
    for seed in range(2):
        v = torch.randn(size, dtype=D, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(fvp(v), exact(v), rtol=1e-10, atol=1e-12)
    learner_full = make_meta_optimizer(
        policy, MetaLearnerSettings(inner_lr=0.3, inner_objective=objective), 1, learned
    )
    v = torch.randn(size, dtype=D, generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(learner_full.gradient_and_fvp(inner, post, None)[2](v), fvp(v))
