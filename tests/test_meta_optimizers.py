"""The outer-optimiser registry (maml_rl.meta_optimizers): one entry per ``algorithm``, built
from the config alone; each optimiser's logged columns; old checkpoints (written by the code
before the registry, tests/data/main_checkpoints) still load and continue exactly."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maml_rl.checkpoint import load_checkpoint
from maml_rl.clipped_meta import ClippedAdam
from maml_rl.config import from_dict
from maml_rl.logger import read_progress
from maml_rl.meta_learner import TRPO
from maml_rl.meta_optimizers import (
    META_OPTIMIZERS,
    make_meta_optimizer,
    meta_optimizer_class,
    meta_optimizer_spec,
)
from maml_rl.policy import GaussianMLPPolicy
from maml_rl.run import resume, train
from maml_rl.settings import ALGORITHMS, MetaLearnerSettings
from maml_rl.trainer import MAMLTrainer
from maml_rl.trpo import flatten
from tests.conftest import random_loss_inputs, tiny_config

OLD_RUNS = Path(__file__).parent / "data" / "main_checkpoints"
"""Runs of 1 iteration written before the registry existed (commit 0fbf87e): ``tiny_config`` with
meta_batch_size=2, episodes_per_task=2, max_episode_steps=5, hidden_sizes=[4], seed 3, Meta-SGD,
with maml-ppo (outer_steps=2; a ``meta_optimizer`` entry) and with maml-trpo."""

OLD_RUN_KEYS = {
    "ppo_meta_sgd": dict(algorithm="maml-ppo", meta_sgd=True, outer_steps=2),
    "trpo_meta_sgd": dict(meta_sgd=True),
}


def test_the_registry_names_every_algorithm_of_the_settings():
    assert tuple(META_OPTIMIZERS) == ALGORITHMS
    assert meta_optimizer_class("maml-trpo") is TRPO
    assert meta_optimizer_class("maml-ppo") is meta_optimizer_class("promp") is ClippedAdam
    with pytest.raises(
        ValueError, match=r"unknown algorithm 'maml-sgd'; choose one of \['maml-trpo'"
    ):
        meta_optimizer_spec("maml-sgd")


def test_the_registry_imports_no_torch():
    """Its entry points are strings: the names can be listed where torch is not wanted."""
    code = "import sys, maml_rl.meta_optimizers; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("algorithm", "items"),
    [
        ("maml-trpo", ["step_fraction", "line_search_steps", "cg_residual"]),
        ("maml-ppo", ["clip_fraction", "inner_kl", "inner_kl_coef", "outer_steps"]),
        ("promp", ["clip_fraction", "inner_kl", "inner_kl_coef", "outer_steps"]),
    ],
)
def test_each_optimiser_steps_and_names_its_own_log_items(algorithm, items):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(3, 2, (6,), "tanh").double()
    inner = [random_loss_inputs(4, 7, 3, 2, seed=s) for s in range(2)]
    valid = random_loss_inputs(4, 6, 3, 2, seed=100)
    objective = "lvc" if algorithm == "promp" else "reinforce"
    settings = MetaLearnerSettings(inner_lr=0.3, algorithm=algorithm, inner_objective=objective)
    optimizer = make_meta_optimizer(policy, settings, 2)
    assert optimizer.adaptation.policy is policy
    before = [p.detach().clone() for p in policy.parameters()]
    result = optimizer.step(inner, valid, torch.Generator().manual_seed(0))
    assert result.accepted and result.reason == "accepted"
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))
    assert list(result.log_items()) == items
    assert all(isinstance(v, int | float) for v in result.log_items().values())
    assert bool(optimizer.state_dict()) == (algorithm != "maml-trpo")


def test_promp_alone_is_penalised_and_labelled_by_the_registry():
    assert META_OPTIMIZERS["promp"].kwargs == {"penalised": True}
    assert [s.label for s in META_OPTIMIZERS.values()] == ["MAML", "MAML-PPO", "ProMP"]
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(3, 2, (6,), "tanh").double()
    ppo = make_meta_optimizer(policy, MetaLearnerSettings(algorithm="maml-ppo"), 1)
    promp = make_meta_optimizer(
        policy, MetaLearnerSettings(algorithm="promp", inner_objective="lvc"), 1
    )
    assert (ppo.penalised, promp.penalised) == (False, True)


@pytest.mark.parametrize("name", sorted(OLD_RUN_KEYS))
def test_an_old_checkpoint_resumes_as_an_uninterrupted_run(tmp_path, name):
    """A checkpoint and progress.csv of the code before the registry (maml-ppo with Adam's
    moments and eta under ``meta_optimizer``, Meta-SGD's rho in the policy) hold what a run of
    today's code holds (the same entries, shapes and dtypes, the same columns logged), and resume
    exactly: to the state of a trainer given the old checkpoint's state and run on without a
    stop. (The old run's numbers themselves are not compared with a run made here: another CPU
    rounds differently, and TRPO's line search turns that into a different step.)"""
    old = tmp_path / "old"
    shutil.copytree(OLD_RUNS / name, old)
    old_header = read_progress(old / "progress.csv")[0]
    config = dict(meta_batch_size=2, episodes_per_task=2, max_episode_steps=5, hidden_sizes=[4])
    config.update(OLD_RUN_KEYS[name])
    fresh = train(tiny_config(**config, num_iterations=1), tmp_path / "fresh", stdout=False)
    assert read_progress(fresh / "progress.csv")[0] == old_header
    now, then = load_checkpoint(fresh), load_checkpoint(old)
    assert set(now) == set(then)
    for part in ("policy", "meta_optimizer"):
        mine, theirs = now.get(part, {}), then.get(part, {})
        assert set(mine) == set(theirs), part
        for key, value in mine.items():
            other = theirs[key]
            if isinstance(value, torch.Tensor):
                assert (value.shape, value.dtype) == (other.shape, other.dtype), key
            else:
                assert [(x.shape, x.dtype) for x in value] == [(y.shape, y.dtype) for y in other]
    continued = MAMLTrainer(from_dict(then["config"]).validate())
    continued.load_state_dict(then)
    continued.advance()
    expected = continued.state_dict()
    continued.close()
    resume(old, {"num_iterations": 2}, stdout=False)
    resumed = load_checkpoint(old)
    assert resumed["iteration"] == 2 and set(resumed) == set(expected)
    assert all(torch.equal(expected["policy"][k], resumed["policy"][k]) for k in expected["policy"])
    if "meta_optimizer" in expected:
        sa, sb = expected["meta_optimizer"], resumed["meta_optimizer"]
        assert (
            set(sa) == set(sb) == {"inner_kl_coef", "adam_step", "adam_exp_avg", "adam_exp_avg_sq"}
        )
        assert torch.equal(sa["adam_step"], sb["adam_step"])
        assert all(torch.equal(x, y) for x, y in zip(sa["adam_exp_avg_sq"], sb["adam_exp_avg_sq"]))


def _meta_gradients(first_order: bool) -> list[torch.Tensor]:
    """At the theta of sampling (ratio 1, nothing clipped): the gradient of ClippedAdam's
    surrogate, of TRPO's by autograd and TRPO's by hand, on one shared Adaptation."""
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(3, 2, (6,), "tanh").double()
    inner = [random_loss_inputs(4, 7, 3, 2, seed=s) for s in range(2)]
    valid = random_loss_inputs(4, 6, 3, 2, seed=100)
    settings = MetaLearnerSettings(inner_lr=0.3, algorithm="maml-ppo", first_order=first_order)
    ppo = make_meta_optimizer(policy, settings, 2)
    trpo = TRPO(ppo.adaptation, settings)
    params = list(policy.parameters())
    clipped = torch.autograd.grad(ppo.evaluate(inner, valid).surrogate, params)
    by_autograd = torch.autograd.grad(trpo.surrogate_and_kl(inner, valid)[0], params)
    by_hand = trpo.gradient_and_fvp(inner, valid, None)[1]
    return [flatten(clipped), flatten(by_autograd), by_hand]


def test_first_order_is_decided_by_the_adaptation_for_every_path():
    """``first_order`` read once (Adaptation.second_order) reaches the clipped step, TRPO's
    autograd surrogate and TRPO's hand-written gradient alike, and changes the gradient."""
    second, first = _meta_gradients(False), _meta_gradients(True)
    for grads in (second, first):
        for g in grads[1:]:
            torch.testing.assert_close(g, grads[0], rtol=1e-10, atol=1e-12)
    assert not torch.allclose(first[0], second[0], rtol=1e-6)
