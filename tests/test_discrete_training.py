"""MAML end to end on the discrete-action families: presets, training adapts on the bandit,
resume is exact, ``maml-rl evaluate`` with the comparison methods, and the Python API."""

import json
import math

import numpy as np
import pytest
import torch

import maml_envs  # noqa: F401  (registers the families)
import maml_rl
from maml_rl.checkpoint import load_checkpoint
from maml_rl.cli import main
from maml_rl.config import load_config
from maml_rl.family import TaskFamily
from maml_rl.policy import CategoricalMLPPolicy
from maml_rl.run import load_policy, resume, train
from maml_rl.settings import PolicySettings
from maml_rl.trainer import MAMLTrainer, make_policy
from tests.conftest import logged_numbers, progress_rows

QUIET = ["progress_bar=false", "checkpoint_every=100", "torch_threads=1"]
"""One torch thread: these networks are tiny, and on 2 busy cores torch's default threads made
the meta-step up to 100x slower (measured: 0.3 s against 35 s for 20 bandit iterations)."""


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_presets_give_a_categorical_policy_with_the_port_settings():
    for name, k in (("bandit-k5", 5), ("bandit-k10", 10), ("bandit-k50", 50)):
        c = load_config(name)
        assert c.env_id == f"MAML/BernoulliBandit-K{k}-v0"
        assert (c.gamma, c.gae_lambda, c.inner_lr, c.num_inner_steps) == (0.95, 1.0, 0.5, 1)
        assert (c.meta_batch_size, c.episodes_per_task, c.num_iterations) == (20, 10, 500)
        assert c.hidden_sizes == [32, 32] and c.nonlinearity == "relu"
        assert (c.max_kl, c.cg_iters, c.cg_damping) == (0.01, 10, 1e-5)
        assert (c.ls_max_steps, c.ls_backtrack_ratio) == (15, 0.8)
        policy = make_policy(TaskFamily.from_config(c), c.part(PolicySettings))
        assert isinstance(policy, CategoricalMLPPolicy) and policy.num_actions == k
    mdp = load_config("tabular-mdp")
    policy = make_policy(TaskFamily.from_config(mdp), mdp.part(PolicySettings))
    assert isinstance(policy, CategoricalMLPPolicy) and (policy.obs_dim, policy.num_actions) == (
        10,
        5,
    )


def test_maml_on_the_5_armed_bandit_adapts():
    """20 meta-iterations of the bandit-k5 preset with 40 tasks and alpha = 2: the mean
    post-update return (one inner step on 10 pulls per task) is above the pre-update return by
    more than 0.03 (measured: 0.058 at seed 1; 0.046 and 0.060 at seeds 2 and 3; a return is
    the fraction of pulls that paid, about 0.5 before adaptation).

    Why not the preset's alpha = 0.5: one step of it from near-uniform logits gains only about
    0.013 in expectation (a numpy simulation of the update: 0.051 at alpha = 2), less than
    twice the noise of 20 iterations' returns (standard error about 0.008)."""
    overrides = ["num_iterations=20", "seed=1", "inner_lr=2.0", "meta_batch_size=40"]
    config = load_config("bandit-k5", [*overrides, *QUIET])
    pre, post = [], []

    def record(_trainer, result):
        pre.append(float(result.pre_returns.mean()))
        post.append(float(result.post_returns.mean()))

    trainer = MAMLTrainer(config)
    try:
        for _ in range(config.num_iterations):
            record(trainer, trainer.advance())
    finally:
        trainer.close()
    gain = np.mean(post) - np.mean(pre)
    assert gain > 0.03, (np.mean(pre), np.mean(post), pre, post)


def _mdp_config(**overrides):
    values = dict(meta_batch_size=4, episodes_per_task=4, hidden_sizes=[16], num_iterations=4)
    values.update(overrides)
    args = [f"{k}={json.dumps(v)}" for k, v in values.items()]
    return load_config("tabular-mdp", [*args, "seed=3", *QUIET])


def test_resume_of_a_tabular_mdp_run_equals_the_uninterrupted_run(tmp_path):
    full = train(_mdp_config(), tmp_path / "full", stdout=False)

    def interrupt_after_two(trainer, _result):
        if trainer.iteration == 2:
            raise KeyboardInterrupt

    run = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(_mdp_config(), run, stdout=False, callbacks=[interrupt_after_two])
    assert load_checkpoint(run)["iteration"] == 2
    resume(run, stdout=False)
    final, resumed = load_checkpoint(full), load_checkpoint(run)
    assert resumed["iteration"] == 4 and "log_std" not in final["policy"]
    assert all(torch.equal(final["policy"][k], resumed["policy"][k]) for k in final["policy"])
    assert logged_numbers(progress_rows(full)) == logged_numbers(progress_rows(run))
    meta, _ = load_policy(run)
    assert isinstance(meta.policy, CategoricalMLPPolicy) and meta.step_sizes is None


@pytest.fixture(scope="module")
def bandit_run(tmp_path_factory):
    config = load_config(
        "bandit-k5", ["meta_batch_size=4", "num_iterations=2", "hidden_sizes=[8]", *QUIET]
    )
    return train(config, tmp_path_factory.mktemp("bandit") / "run", stdout=False)


def test_evaluate_a_bandit_run_with_the_comparison_methods(bandit_run, tmp_path, capsys):
    pre, oracle, out = tmp_path / "pre", tmp_path / "oracle", tmp_path / "cmp"
    common = ["--config", "bandit-k5", "--quiet", "--set", "meta_batch_size=4"]
    common += ["num_iterations=1", "hidden_sizes=[8]", "progress_bar=false"]
    assert main(["baseline", "--kind", "pretrained", "--run-dir", str(pre), *common]) == 0
    args = ["--timesteps", "64", "--n-envs", "2", "--run-dir", str(oracle)]
    assert main(["baseline", "--kind", "oracle", *args, "--ppo-set", "n_epochs=1", *common]) == 0
    capsys.readouterr()
    argv = ["evaluate", str(bandit_run), str(pre), "--compare", str(oracle), "--random-init"]
    argv += ["--num-tasks", "3", "--num-steps", "2", "--env-steps", "10", "-o", str(out)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in ("MAML", "pretrained", "oracle", "random init"))
    data = json.loads((out / "returns.json").read_text())
    assert {m["kind"] for m in data["methods"]} == {"maml", "pretrained", "oracle", "random"}
    for m in data["methods"]:
        assert len(m["returns"]) == (1 if m["kind"] == "oracle" else 3)
        # a bandit return is one pull: the mean of 10 pulls of 0/1 rewards
        assert all(math.isfinite(x) and 0 <= x <= 1 for row in m["returns"] for x in row)
    assert (out / "returns.png").is_file()


def test_videos_of_a_bandit_run_are_skipped_with_a_message(bandit_run, tmp_path, capsys):
    from maml_rl.evaluation import EvalSettings, evaluate, load_method

    settings = EvalSettings(num_tasks=2, num_steps=1, env_steps=10)
    evaluate([load_method(bandit_run)], settings, tmp_path, plots=False, video=True)
    assert "video: skipped, MAML/BernoulliBandit-K5-v0 renders no frames" in capsys.readouterr().out


def test_api_adapts_to_a_bandit_and_acts_with_arm_indices(bandit_run):
    policy, config = maml_rl.load_policy(bandit_run)
    env = maml_rl.make_env(config)
    task = env.unwrapped.sample_tasks(1, np.random.default_rng(0))[0]
    adapted = maml_rl.adapt(policy, config, task, num_steps=1, episodes=10, seed=2)
    assert len(adapted.returns) == 2 and all(0 <= r <= 1 for r in adapted.returns)
    obs = np.zeros((3, 1), dtype=np.float32)
    assert adapted.policy is policy.policy
    with torch.no_grad():
        logits = adapted.policy(torch.from_numpy(obs)[None], adapted.params)[0]
    best = logits.argmax(-1).numpy()
    actions = adapted.act(obs)
    assert actions.dtype == np.int64 and np.array_equal(actions, best)
    action = adapted.act(obs[0])
    assert action.shape == () and env.action_space.contains(int(action))
    env.reset(seed=0, options={"task": task})
    assert env.step(adapted.act(obs[0], deterministic=False, rng=np.random.default_rng(0)))[2]
    # a sharply peaked policy samples its peak; a flat one samples every arm
    peaked = {k: v.clone() for k, v in adapted.params.items()}
    peaked["layers.1.bias"] = torch.tensor([[0.0, 0.0, 0.0, 30.0, 0.0]])
    peaked["layers.1.weight"] = torch.zeros_like(peaked["layers.1.weight"])
    adapted.params = peaked
    many = np.zeros((200, 1), dtype=np.float32)
    rng = np.random.default_rng(1)
    assert (adapted.act(many, deterministic=False, rng=rng) == 3).all()
    adapted.params = {**peaked, "layers.1.bias": torch.zeros(1, 5)}
    assert set(adapted.act(many, deterministic=False, rng=rng).tolist()) == set(range(5))
