"""Meta-test evaluation, baselines, plots and videos (tiny budgets; navigation unless noted)."""

import json
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

import maml_envs  # noqa: F401  (registers the families)
from maml_rl.adaptation import inner_loss
from maml_rl.advantages import compute_advantages
from maml_rl.batch import loss_inputs
from maml_rl.checkpoint import load_checkpoint
from maml_rl.cli import main
from maml_rl.comparisons import TaskObservationWrapper, load_oracle, make_oracle_env, run_kind
from maml_rl.config import TrainConfig
from maml_rl.evaluation import (
    EvalSettings,
    EvaluationReport,
    Method,
    MethodResult,
    adapt_and_evaluate,
    episodes_per_task,
    evaluate,
    evaluation_seed,
    format_table,
    load_method,
    random_policy,
    sample_test_tasks,
    step_sizes,
)
from maml_rl.family import TaskFamily
from maml_rl.run import train
from maml_rl.sampler import VectorSampler
from maml_rl.seeding import derive_seed

TINY = ["meta_batch_size=4", "episodes_per_task=4", "hidden_sizes=[16,16]", "num_iterations=1"]


def _config(**overrides) -> TrainConfig:
    values = dict(
        meta_batch_size=4,
        episodes_per_task=4,
        hidden_sizes=[16, 16],
        num_iterations=1,
        progress_bar=False,
        inner_lr=0.5,
        seed=5,
    )
    values.update(overrides)
    return TrainConfig(**values).validate()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return train(_config(), tmp_path_factory.mktemp("eval") / "run", stdout=False)


def test_step_sizes_and_rollouts_per_task():
    assert step_sizes(0.1, 3) == [0.1, 0.05, 0.05]
    assert step_sizes(0.5, 1) == [0.5]
    assert step_sizes(0.5, 0) == []
    assert episodes_per_task(4000, 100) == 40
    assert episodes_per_task(4000, 200) == 20
    assert episodes_per_task(150, 100) == 2


def test_evaluation_writes_files_and_a_finite_table(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    settings = EvalSettings(num_tasks=4, num_steps=2, env_steps=300, seed=1)
    report = evaluate([load_method(run_dir)], settings, out)
    table = capsys.readouterr().out
    assert "2 steps" in table and "MAML" in table and "nan" not in table
    for name in ("returns.json", "returns.csv", "returns.png", "trajectories.png"):
        assert (out / name).is_file(), name
    for name in ("returns.png", "trajectories.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "success.png").exists()  # navigation reports no success
    data = json.loads((out / "returns.json").read_text())
    assert data["episodes_per_task"] == 3 and data["num_tasks"] == 4
    (method,) = data["methods"]
    assert method["kind"] == "maml" and method["step_sizes"] == [0.5, 0.25]
    returns = np.array(method["returns"])
    assert returns.shape == (3, 4) and np.isfinite(returns).all()
    assert np.allclose(method["mean"], returns.mean(1))
    assert np.allclose(method["stderr"], returns.std(1, ddof=1) / 2.0)
    rows = (out / "returns.csv").read_text().splitlines()
    assert rows[0] == "method,kind,step,task_index,task,return" and len(rows) == 1 + 3 * 4
    assert report.results[0].returns.shape == (3, 4)
    assert format_table(report).splitlines()[-1].count("±") == 3


def test_adapted_params_follow_alpha_then_half_alpha(run_dir):
    """Recompute every step by hand: theta_{j+1,i} = theta_{j,i} - alpha_j grad L_i(theta_{j,i})
    with alpha_0 = alpha and alpha_j = alpha / 2 after, on the same seeded rollouts."""
    method = load_method(run_dir)
    config = method.config
    settings = EvalSettings(num_tasks=3, num_steps=2, env_steps=200, seed=2, alpha=0.3)
    tasks = sample_test_tasks(config, 3, 2)
    _, schedule, _, history = adapt_and_evaluate(method.policy, config, tasks, settings, True)
    assert schedule == [0.3, 0.15]
    sampler = VectorSampler(TaskFamily.from_config(config), method.policy)
    k = episodes_per_task(200, 100)
    for j, lr in enumerate([0.3, 0.15]):
        batch = sampler.sample(tasks, history[j], k, derive_seed(2, 2**31 - 1, 1 + j))
        adv = compute_advantages(
            batch.observations, batch.rewards, batch.mask, config.gamma, config.gae_lambda, True
        )
        data = loss_inputs(batch, adv)
        for i in range(3):
            theta = {
                name: (p[i] if p.dim() > method.policy.params()[name].dim() else p)
                .detach()
                .clone()
                .requires_grad_(True)
                for name, p in history[j].items()
            }
            one = data.map(lambda x, i=i: x[i])
            loss = inner_loss(method.policy, theta, one)
            grads = torch.autograd.grad(loss, list(theta.values()))
            for (name, p), g in zip(theta.items(), grads):
                expected = p.detach() - lr * g
                assert torch.allclose(history[j + 1][name][i], expected, atol=1e-5), (j, name)
    sampler.close()


def test_eval_episodes_measure_on_separate_rollouts_with_the_adapted_params(run_dir):
    """Meta-World+'s protocol: adapt on K rollouts, report E fresh ones per task and step,
    sampled (with their own seeds) with exactly the parameters the K-rollout run adapted to."""
    method = load_method(run_dir)
    config = method.config
    plain = EvalSettings(num_tasks=3, num_steps=2, env_steps=200, seed=2)
    measured = EvalSettings(num_tasks=3, num_steps=2, env_steps=200, seed=2, eval_episodes=3)
    tasks = sample_test_tasks(config, 3, 2)
    r_plain, _, _, h_plain = adapt_and_evaluate(method.policy, config, tasks, plain, True)
    r_meas, _, rollouts, h_meas = adapt_and_evaluate(method.policy, config, tasks, measured, True)
    for a, b in zip(h_plain, h_meas):  # the adaptation itself is unchanged
        assert all(torch.equal(a[name], b[name]) for name in a)
    assert [obs.shape[2] for obs, _ in rollouts] == [3, 3, 3]
    sampler = VectorSampler(TaskFamily.from_config(config), method.policy)
    for j in range(3):
        batch = sampler.sample(tasks, h_meas[j], 3, evaluation_seed(2, j))
        expected = batch.episode_returns.double().mean(dim=1).numpy()
        assert np.array_equal(r_meas[j], expected), j
    sampler.close()
    assert not np.array_equal(r_meas, r_plain)  # other rollouts, other numbers
    assert evaluation_seed(2, 0) != derive_seed(2, 2**31 - 1, 1)
    with pytest.raises(ValueError, match="eval_episodes must be >= 1"):
        EvalSettings(eval_episodes=0).validate()


def test_eval_episodes_reach_the_table_json_and_cli(run_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["evaluate", str(run_dir), "--num-tasks", "2", "--num-steps", "1"]
    assert main([*argv, "--env-steps", "300", "--eval-episodes", "2", "-o", str(out)]) == 0
    title = "adapted on 3 rollouts per task and step, measured on 2 others"
    assert title in capsys.readouterr().out
    data = json.loads((out / "returns.json").read_text())
    assert data["eval_episodes"] == 2 and data["episodes_per_task"] == 3


def test_each_method_family_is_resolved_once(run_dir, tmp_path, monkeypatch):
    calls = []
    original = TaskFamily.from_config.__func__

    def counting(cls, config):
        calls.append(config.env_id)
        return original(cls, config)

    monkeypatch.setattr(TaskFamily, "from_config", classmethod(counting))
    methods = [load_method(run_dir), load_method(run_dir, "again")]
    calls.clear()
    settings = EvalSettings(num_tasks=2, num_steps=1, env_steps=200, seed=1)
    evaluate(methods, settings, tmp_path / "once", plots=True, stdout=False)
    assert len(calls) == 2  # one per method, whatever evaluation does with it


def test_success_plot_draws_each_method_that_reports_success(tmp_path):
    from maml_rl.plots import _title, plot_success

    settings = EvalSettings(num_tasks=3, num_steps=1, env_steps=1000, eval_episodes=3)
    rates = np.array([[0.0, 1 / 3, 0.0], [1.0, 2 / 3, 1.0]])
    results = [
        MethodResult("MAML", "maml", "a", np.zeros((2, 3)), success=rates),
        MethodResult("pretrained", "pretrained", "b", np.zeros((2, 3)), success=rates / 2),
        MethodResult("no success", "random", "c", np.zeros((2, 3))),
    ]
    report = EvaluationReport("MAML/X-v0", settings, 500, 2, [], results)
    path = plot_success(report, tmp_path / "success.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _title(report) == "MAML/X-v0\n3 test tasks, adapted on 2, measured on 3 rollouts"


def test_path_plots_are_declared_by_the_family_not_by_its_id():
    nav = TaskFamily.make("MAML/Navigation2D-v0")
    cheetah = TaskFamily.make("MAML/HalfCheetahVel-rllab-v0")
    assert nav.plots_paths and not cheetah.plots_paths


def test_test_tasks_are_fixed_and_disjoint_from_training(run_dir):
    config = load_method(run_dir).config
    a = sample_test_tasks(config, 40, seed=0)
    assert a == sample_test_tasks(config, 40, seed=0)
    assert a != sample_test_tasks(config, 40, seed=1)
    family = gym.make(config.env_id).unwrapped
    for train_seed in (0, config.seed):  # also when the test seed equals the training seed
        test = set(sample_test_tasks(config, 40, seed=train_seed))
        for iteration in range(200):
            rng = np.random.default_rng(derive_seed(train_seed, iteration, 0))
            assert test.isdisjoint(family.sample_tasks(config.meta_batch_size, rng))


def test_families_must_match(run_dir):
    cheetah = _config(env_id="MAML/HalfCheetahVel-v0")
    methods = [
        load_method(run_dir),
        Method("x", "random", "x", cheetah, policy=random_policy(cheetah)),
    ]
    with pytest.raises(ValueError, match="not of MAML/Navigation2D-v0"):
        evaluate(methods, EvalSettings(num_tasks=2, num_steps=1, env_steps=100), stdout=False)


def test_oracle_wrapper_appends_and_resamples_the_task():
    env = make_oracle_env(_config(), index=0)
    assert isinstance(env, TaskObservationWrapper) and env.observation_space.shape == (4,)
    goals = []
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        assert np.allclose(obs[2:], env.task.as_array()) and env.unwrapped.task == env.task
        goals.append(env.task)
        obs, *_ = env.step(env.action_space.sample())
        assert np.allclose(obs[2:], goals[-1].as_array())
    assert len(set(goals)) == 3


def test_baseline_cli_and_comparison(run_dir, tmp_path, capsys):
    pre, oracle, out = tmp_path / "pre", tmp_path / "oracle", tmp_path / "cmp"
    common = ["--config", "navigation", "--quiet", "--set", *TINY, "progress_bar=false"]
    assert main(["baseline", "--kind", "pretrained", "--run-dir", str(pre), *common]) == 0
    assert run_kind(pre) == "pretrained"
    assert load_checkpoint(pre)["config"]["num_inner_steps"] == 0
    args = ["--timesteps", "256", "--n-envs", "2", "--run-dir", str(oracle)]
    ppo = ["--ppo-set", "n_epochs=3", "policy_kwargs={log_std_init: -1.5}"]
    assert main(["baseline", "--kind", "oracle", *args, *ppo, *common]) == 0
    assert run_kind(oracle) == "oracle" and (oracle / "oracle.zip").is_file()
    marker = yaml.safe_load((oracle / "baseline.yaml").read_text())
    assert marker["timesteps"] >= 256 and (oracle / "progress.csv").is_file()
    assert marker["ppo"]["n_epochs"] == 3
    assert marker["ppo"]["policy_kwargs"] == {
        "net_arch": {"pi": [16, 16], "vf": [16, 16]},
        "log_std_init": -1.5,
    }
    policy, _ = load_oracle(oracle)
    assert np.allclose(policy.log_std.detach().numpy(), -1.5, atol=0.05)
    capsys.readouterr()
    argv = ["evaluate", str(run_dir), str(pre), "--compare", str(oracle), "--random-init"]
    argv += ["--num-tasks", "3", "--num-steps", "1", "--env-steps", "200", "-o", str(out)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in ("MAML", "pretrained", "oracle", "random init"))
    data = json.loads((out / "returns.json").read_text())
    kinds = {m["kind"]: m for m in data["methods"]}
    assert set(kinds) == {"maml", "pretrained", "oracle", "random"}
    assert len(kinds["oracle"]["returns"]) == 1 and len(kinds["maml"]["returns"]) == 2
    assert all(math.isfinite(x) for m in data["methods"] for row in m["returns"] for x in row)
    assert (out / "returns.png").is_file() and (out / "trajectories_pretrained.png").is_file()
    argv = ["evaluate", str(oracle), "--oracle-deterministic", "--num-tasks", "2"]
    assert main([*argv, "--env-steps", "100", "-o", str(tmp_path / "det")]) == 0
    assert "oracle (mean action)" in capsys.readouterr().out
    assert (oracle / "progress.csv").read_text().count("rollout/ep_rew_mean") == 1


def test_oracle_rejects_bad_ppo_settings(tmp_path, capsys):
    argv = ["baseline", "--kind", "oracle", "--config", "navigation", "--timesteps", "64"]
    argv += ["--run-dir", str(tmp_path / "o")]
    assert main([*argv, "--ppo-set", "n_epoch=3"]) == 2
    assert "['n_epoch'] cannot be set" in capsys.readouterr().err
    assert main([*argv, "--ppo-set", "seed=3"]) == 2
    assert "['seed'] cannot be set" in capsys.readouterr().err
    assert main([*argv, "--ppo-set", "policy_kwargs=3"]) == 2
    assert "policy_kwargs must be a mapping" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    pre = ["baseline", "--kind", "pretrained", "--config", "navigation", "--ppo-set", "n_epochs=3"]
    assert main(pre) == 2
    assert "--ppo-set applies to --kind oracle only" in capsys.readouterr().err


def test_cli_errors_are_messages(tmp_path, capsys):
    assert main(["evaluate"]) == 2
    assert "give a run folder" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def _fake_report(env_id: str, config: TrainConfig) -> tuple[EvaluationReport, MethodResult]:
    policy = random_policy(config)
    tasks = sample_test_tasks(config, 1, 0)
    theta = {k: v.detach() for k, v in policy.params().items()}
    result = MethodResult("MAML", "maml", "x", np.zeros((2, 1)), [0.1], policy=policy)
    result.params = [theta, {k: v[None] for k, v in theta.items()}]
    report = EvaluationReport(env_id, EvalSettings(1, 1), 200, 1, tasks, [result])
    return report, result


@pytest.mark.parametrize(
    "preset", ["halfcheetah-dir", "ant-vel", "halfcheetah-vel-rllab", "ant-dir-rllab"]
)
def test_videos_render_through_the_tracking_camera(preset):
    import mujoco

    from maml_rl.config import load_config
    from maml_rl.video import make_render_env

    env = make_render_env(
        TaskFamily.from_config(load_config(preset)), 32, 24
    )  # no GL context until the first render
    renderer = env.unwrapped.mujoco_renderer
    assert renderer.camera_id >= 0
    assert renderer.model.camera(renderer.camera_id).name == "track"
    assert renderer.model.cam_mode[renderer.camera_id] == mujoco.mjtCamLight.mjCAMLIGHT_TRACKCOM
    env.close()


def test_video_skips_with_a_message_without_renderer(tmp_path, monkeypatch):
    import maml_rl.video as video

    def no_gl(*args, **kwargs):
        raise RuntimeError("no OpenGL context")

    monkeypatch.setattr(video, "make_render_env", no_gl)
    config = _config(env_id="MAML/HalfCheetahVel-v0")
    report, result = _fake_report("MAML/HalfCheetahVel-v0", config)
    family = TaskFamily.from_config(config)
    written, message = video.write_videos(report, result, family, tmp_path / "v")
    assert written == [] and "no MuJoCo offscreen renderer" in message
    assert "libosmesa6" in message and "no OpenGL context" in message
    assert not (tmp_path / "v").exists()
    nav = _config()
    report, result = _fake_report("MAML/Navigation2D-v0", nav)
    nav_family = TaskFamily.from_config(nav)
    assert "skipped" in video.write_videos(report, result, nav_family, tmp_path / "v")[1]


def test_video_flag_on_navigation_prints_a_skip(run_dir, tmp_path, capsys):
    argv = ["evaluate", str(run_dir), "--num-tasks", "2", "--num-steps", "1"]
    argv += ["--env-steps", "100", "--no-plots", "--video", "-o", str(tmp_path)]
    assert main(argv) == 0
    assert "video: skipped" in capsys.readouterr().out


@pytest.mark.slow
def test_video_renders_when_a_renderer_exists(tmp_path):
    import subprocess
    import sys

    from maml_rl.video import GL_BACKENDS, probe_gl

    backend = next((b for b in GL_BACKENDS if probe_gl(b)), None)
    if backend is None:
        pytest.skip("no EGL/OSMesa renderer on this machine")
    argv = ["evaluate", "--random-init", "--config", "halfcheetah-vel"]
    argv += ["--set", "hidden_sizes=[16,16]", "--num-tasks", "1", "--num-steps", "1"]
    argv += ["--env-steps", "200", "--no-plots", "--video", "--video-tasks", "1"]
    argv += ["-o", str(tmp_path)]
    code = "import sys; from maml_rl.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**__import__("os").environ, "MUJOCO_GL": backend}
    done = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    videos = list((tmp_path / "videos").iterdir())
    assert len(videos) == 1 and videos[0].stat().st_size > 10_000


RESULTS = Path(__file__).resolve().parents[1] / "results"


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "navigation",
        "halfcheetah-vel",
        "halfcheetah-dir",
        "halfcheetah-vel-rllab",
        "halfcheetah-dir-rllab",
        "ant-vel-rllab",
    ],
)
def test_committed_policy_reaches_its_recorded_return(name):
    run = RESULTS / name
    recorded_path = run / "evaluation" / "returns.json"
    assert (run / "checkpoint.pt").is_file() and recorded_path.is_file()
    recorded = json.loads(recorded_path.read_text())
    maml = next(m for m in recorded["methods"] if m["kind"] == "maml")
    settings = EvalSettings(
        recorded["num_tasks"],
        1,
        recorded["env_steps_per_step"],
        recorded["seed"],
        alpha=maml["step_sizes"][0],
    )
    report = evaluate([load_method(run)], settings, plots=False, stdout=False)
    margin = max(2.0 * maml["stderr"][1], 0.5)
    assert report.results[0].mean[1] >= maml["mean"][1] - margin


@pytest.mark.parametrize(
    ("overrides", "label"),
    [
        ([], "MAML"),
        (["first_order=true"], "first-order MAML"),
        (["algorithm=promp", "inner_objective=lvc"], "ProMP"),
        (["algorithm=maml-ppo"], "MAML-PPO"),
        (["inner_objective=dice"], "MAML + DiCE"),
        (["inner_objective=lvc"], "MAML + LVC"),
        (["meta_sgd=true"], "Meta-SGD"),
        (["meta_sgd=true", "algorithm=maml-ppo"], "Meta-SGD (MAML-PPO)"),
    ],
)
def test_a_runs_default_label_names_its_variant(overrides, label):
    from maml_rl.config import load_config
    from maml_rl.labels import maml_variant_label

    assert maml_variant_label(load_config("navigation", overrides)) == label
