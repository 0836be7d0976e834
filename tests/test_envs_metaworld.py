"""Meta-World ML1 / ML10 / ML45 task families (maml_envs.meta_world): the weld fix, the
benchmark's goals, the task protocol, single == batched. Skipped without ``metaworld``."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest

metaworld = pytest.importorskip("metaworld")
mujoco = pytest.importorskip("mujoco")

import maml_envs  # noqa: E402
from maml_envs import meta_world  # noqa: E402
from maml_envs.meta_world import (  # noqa: E402
    MetaWorldTask,
    MetaWorldTaskSpace,
    make_sawyer,
    weld_row,
)

ML1_PUSH = "MAML/MetaWorld-ML1-push-v0"


def goal_observable_task(task: MetaWorldTask) -> metaworld.Task:
    """``task`` with the goal in the observation (the expert policies read it)."""
    data = pickle.loads(task.to_metaworld().data)
    data["partially_observable"] = False
    return metaworld.Task(env_name=task.task_name, data=pickle.dumps(data))


def test_ids_cover_the_50_v3_tasks_and_import_no_metaworld_to_register():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    names = [f"{name}-v3" for name in maml_envs.METAWORLD_TASKS]
    assert names == list(ALL_V3_ENVIRONMENTS)
    for name in maml_envs.METAWORLD_TASKS:
        spec = gym.spec(f"MAML/MetaWorld-ML1-{name}-v0")
        assert spec.kwargs == {"benchmark": "ML1", "task_name": f"{name}-v3"}
        assert spec.max_episode_steps == 500
    for name in ("ML10", "ML45"):
        assert gym.spec(f"MAML/MetaWorld-{name}-v0").kwargs["benchmark"] == name


def test_weld_rows_are_12_wide_and_survive_mj_setconst():
    """The fixed weld rows keep their relative pose through mj_setConst; Meta-World's
    11 numbers with a marker at index 11 (the XML default) would be overwritten."""
    env = make_sawyer("push-v3")
    model, data = env.model, env.data
    welds = [i for i in range(model.neq) if model.eq_type[i] == mujoco.mjtEq.mjEQ_WELD]
    assert welds and model.eq_data.shape[1] == 12
    written = model.eq_data[welds].copy()
    np.testing.assert_array_equal(written, np.tile(weld_row(12), (len(welds), 1)))
    mujoco.mj_setConst(model, data)
    np.testing.assert_array_equal(model.eq_data[welds], written)
    # with the marker set, mj_setConst recomputes the relative pose (entries 3-9) from qpos0
    model.eq_data[welds, 11] = 1.0
    mujoco.mj_setConst(model, data)
    assert not np.array_equal(model.eq_data[welds, 3:10], written[:, 3:10])
    env.close()


@pytest.mark.parametrize("task_name", ["reach-v3", "push-v3", "pick-place-v3"])
def test_expert_policies_succeed(task_name):
    """Meta-World's scripted experts solve two training goals each with the weld fix."""
    from metaworld.policies import ENV_POLICY_MAP

    policy = ENV_POLICY_MAP[task_name]()
    goals = meta_world.benchmark_split("ML1", task_name, 0)[0][task_name][:2]
    env = make_sawyer(task_name)
    for goal in goals:
        env.set_task(goal_observable_task(goal))
        obs, _ = env.reset()
        success = False
        for _ in range(500):
            obs, _, _, truncated, info = env.step(policy.get_action(obs))
            if info["success"] or truncated:
                success = bool(info["success"])
                break
        assert success, f"{task_name} expert failed on {goal}"
    env.close()


@pytest.mark.parametrize("task_name", ["pick-place-v3", "sweep-into-v3"])
def test_touching_object_equals_meta_worlds_along_an_expert_episode(task_name):
    """The array form of ``touching_object`` returns Meta-World's value at every step of an
    expert episode (grasps included: both values occur), and the episode's observations,
    rewards and infos equal those of the env with Meta-World's own method, bit for bit."""
    from metaworld.policies import ENV_POLICY_MAP
    from metaworld.sawyer_xyz_env import SawyerXYZEnv

    goal = meta_world.benchmark_split("ML1", task_name, 0)[0][task_name][0]
    fast = make_sawyer(task_name)
    own = type("Own", (type(fast),), {"touching_object": SawyerXYZEnv.touching_object})()
    episodes, seen = [], set()
    for env in (fast, own):
        policy = ENV_POLICY_MAP[task_name]()
        env.set_task(goal_observable_task(goal))
        obs, _ = env.reset()
        steps = []
        for _ in range(300):
            obs, reward, _, _, info = env.step(policy.get_action(obs))
            steps.append((obs.copy(), reward, info))
            if env is fast:
                main = env._get_id_main_object()
                value = meta_world.touching_object(env, main)
                assert value == SawyerXYZEnv.touching_object(env, main)
                seen.add(value)
        episodes.append(steps)
        env.close()
    assert seen == {True, False}
    for (obs_a, reward_a, info_a), (obs_b, reward_b, info_b) in zip(*episodes, strict=True):
        np.testing.assert_array_equal(obs_a, obs_b)
        assert reward_a == reward_b and info_a == info_b


def test_ml1_goals_are_metaworlds(monkeypatch):
    """Our ML1 split equals metaworld.ML1's (the weld fix patched in for this test only: its
    own classes cannot be built on MuJoCo >= 3.17)."""
    from metaworld.sawyer_xyz_env import SawyerMocapBase

    monkeypatch.setattr(SawyerMocapBase, "reset_mocap_welds", meta_world.reset_mocap_welds)
    theirs = metaworld.ML1("reach-v3", seed=3)
    train, test = meta_world.benchmark_split("ML1", "reach-v3", 3)
    for ours, tasks in ((train, theirs.train_tasks), (test, theirs.test_tasks)):
        vecs = [pickle.loads(t.data)["rand_vec"] for t in tasks]
        assert [t.env_name for t in tasks] == ["reach-v3"] * 50
        np.testing.assert_array_equal(np.array([g.rand_vec for g in ours["reach-v3"]]), vecs)
    assert set(train["reach-v3"]).isdisjoint(test["reach-v3"])


def _fake_split(monkeypatch, train_names, test_names, goals=50):
    """Replace the (slow) benchmark construction: 50 goals per name inside its goal bounds,
    a function of the seed and the goal's index."""

    def split(benchmark, task_name, seed):
        def goals_of(names):
            out = {}
            for n in names:
                info = meta_world._class_info(n)
                fracs = (np.arange(goals) + 1.0) / (goals + 1.0) * (1.0 + seed) / 100.0
                vecs = info.reset_low + fracs[:, None] * (info.reset_high - info.reset_low)
                out[n] = tuple(MetaWorldTask(n, tuple(map(float, v))) for v in vecs)
            return out

        return goals_of(train_names), goals_of(test_names)

    monkeypatch.setattr(meta_world, "benchmark_split", split)
    return split


def test_sampling_is_balanced_grouped_and_without_replacement(monkeypatch):
    train, test = meta_world.benchmark_classes("ML10")
    assert len(train) == 10 and len(test) == 5 and not set(train) & set(test)
    split = _fake_split(monkeypatch, train, test)
    space = MetaWorldTaskSpace("ML10")
    tasks = space.sample_split("train", 20, np.random.default_rng(0), seed=7)
    assert [t.task_name for t in tasks] == [n for n in train for _ in range(2)]
    goals = {g for gs in split("ML10", None, 7)[0].values() for g in gs}
    assert len(set(tasks)) == 20 and set(tasks) <= goals
    odd = space.sample_split("test", 7, np.random.default_rng(1), seed=7)
    counts = [sum(t.task_name == n for t in odd) for n in test]
    assert sorted(counts) == [1, 1, 1, 2, 2] and {t.task_name for t in odd} <= set(test)
    many = space.sample_split("test", 5 * 60, np.random.default_rng(2), seed=7)
    assert all(sum(t.task_name == n for t in many) == 60 for n in test)
    assert len(set(many)) == 250  # every goal once before any repeats
    again = space.sample_split("train", 20, np.random.default_rng(0), seed=7)
    assert again == tasks


def test_family_draws_training_and_held_out_tasks_with_the_run_seed(monkeypatch):
    from maml_rl.family import TaskFamily

    train, test = meta_world.benchmark_classes("ML10")
    split = _fake_split(monkeypatch, train, test)
    train_goals, test_goals = ({g for gs in d.values() for g in gs} for d in split("", None, 5))
    family = TaskFamily.make("MAML/MetaWorld-ML10-v0")
    tasks = family.training_tasks(seed=5, iteration=0, num_tasks=10)
    assert [t.task_name for t in tasks] == train and set(tasks) <= train_goals
    assert tasks != family.training_tasks(seed=5, iteration=1, num_tasks=10)
    held_out = family.test_tasks(10, seed=5)
    assert {t.task_name for t in held_out} == set(test) and set(held_out) <= test_goals
    assert held_out == family.test_tasks(10, seed=5)


def test_single_env_protocol_goal_hidden_and_success_info():
    env = gym.make(ML1_PUSH)
    space = env.unwrapped.task_space
    task = space.default
    assert env.unwrapped.task == task and pickle.loads(pickle.dumps(task)) == task
    assert (
        task.as_array().shape == (56,) and task.as_array()[meta_world.TASK_NAMES.index("push-v3")]
    )
    with pytest.raises(ValueError):
        env.unwrapped.reset_task(MetaWorldTask("reach-v3", task.rand_vec))
    with pytest.raises(ValueError):
        env.unwrapped.reset_task(MetaWorldTask("push-v3", (9.0,) * 6))
    with pytest.raises(TypeError):
        env.unwrapped.reset_task(("push-v3", task.rand_vec))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (39,) and np.all(obs[-3:] == 0.0)
    for _ in range(20):
        obs, _, terminated, _, info = env.step(env.action_space.sample())
        assert np.all(obs[-3:] == 0.0) and not terminated and "success" in info
    env.close()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batched_env_equals_single_envs(num_workers):
    train = meta_world.benchmark_split("ML1", "push-v3", 0)[0]["push-v3"]
    tasks = [train[0], train[1], train[1]]
    steps = 15
    venv = gym.make_vec(
        ML1_PUSH,
        num_envs=3,
        vectorization_mode="vector_entry_point",
        max_episode_steps=steps,
        num_workers=num_workers,
    )
    actions = np.random.default_rng(0).uniform(-1, 1, size=(steps, 3, 4))
    try:
        obs, _ = venv.reset(seed=[0, 1, 2], options={"tasks": tasks})
        batched = [obs]
        for t in range(steps):
            obs, reward, terminated, truncated, info = venv.step(actions[t])
            batched.append((obs, reward, info["success"]))
        assert truncated.all() and not terminated.any()
    finally:
        venv.close()
    for i, task in enumerate(tasks):
        env = gym.make(ML1_PUSH, task=task)
        obs, _ = env.reset(seed=i)
        np.testing.assert_array_equal(obs, batched[0][i])
        for t in range(steps):
            obs, reward, _, _, info = env.step(actions[t, i])
            np.testing.assert_array_equal(obs, batched[t + 1][0][i])
            assert reward == batched[t + 1][1][i] and info["success"] == batched[t + 1][2][i]
        env.close()


def _tiny_reach(*overrides: str):
    """The ML1 reach preset, one iteration of 2 tasks x 2 episodes of 12 steps."""
    from maml_rl.config import load_config

    tiny = ["num_iterations=1", "meta_batch_size=2", "episodes_per_task=2"]
    tiny += ["max_episode_steps=12", "hidden_sizes=[8]", "progress_bar=false", "sampler=vector"]
    return load_config("metaworld-ml1-reach", [*tiny, *overrides])


def test_sampler_records_success_and_the_trainer_reports_rates():
    """The batch carries info["success"] per step ([T, M, K]); a meta-iteration reports the
    success rates before and after adaptation; the preset loads."""
    from maml_rl.batch import episode_success
    from maml_rl.trainer import MAMLTrainer

    config = _tiny_reach()
    trainer = MAMLTrainer(config)
    try:
        tasks = trainer.sample_tasks(0)
        assert {t.task_name for t in tasks} == {"reach-v3"}
        batch = trainer.sampler.sample(tasks, trainer.policy.params(), 2, seed=3)
        assert batch.success is not None and batch.success.shape == batch.mask.shape
        assert batch.success.dtype == batch.mask.dtype
        success = episode_success(batch)
        assert success.shape == (2, 2) and set(success.unique().tolist()) <= {0.0, 1.0}
        result = trainer.advance()
        assert result.pre_success.shape == (2, 2) and result.post_success.shape == (2, 2)
        before, after = result.success_rates
        assert 0.0 <= before <= 1.0 and 0.0 <= after <= 1.0
    finally:
        trainer.close()


def test_evaluation_reports_success_on_the_held_out_goals_of_the_runs_benchmark(tmp_path):
    from maml_rl.config import load_config
    from maml_rl.evaluation import Method, evaluate_method, random_policy, sample_test_tasks
    from maml_rl.report import EvalSettings, EvaluationReport, format_table

    overrides = ["max_episode_steps=12", "hidden_sizes=[8]", "seed=4", "sampler=vector"]
    config = load_config("metaworld-ml1-reach", overrides)
    tasks = sample_test_tasks(config, 2, seed=0)
    _, held_out = meta_world.benchmark_split("ML1", "reach-v3", 4)
    assert set(tasks) <= set(held_out["reach-v3"])  # the run's (seed 4) test goals
    settings = EvalSettings(num_tasks=2, num_steps=1, env_steps=24)
    method = Method("MAML", "maml", "x", config, policy=random_policy(config))
    result = evaluate_method(method, tasks, settings)
    assert result.success.shape == (2, 2) and ((0 <= result.success) & (result.success <= 1)).all()
    report = EvaluationReport(config.env_id, settings, 12, 2, tasks, [result])
    assert "MAML: success" in format_table(report)
    assert len(report.to_dict()["methods"][0]["success_mean"]) == 2
    measured = EvalSettings(num_tasks=2, num_steps=1, env_steps=24, eval_episodes=3)
    result = evaluate_method(method, tasks, measured)  # Meta-World+: adapt on 2, measure on 3
    thirds = result.success * 3
    assert result.success.shape == (2, 2) and np.allclose(thirds, np.round(thirds))
    from maml_rl.evaluation import evaluate

    report = evaluate([method], measured, tmp_path, plots=True, stdout=False)
    assert (tmp_path / "success.png").read_bytes()[:4] == b"\x89PNG"
    assert report.to_dict()["eval_episodes"] == 3


def test_training_logs_the_success_rates_before_and_after_adaptation(tmp_path):
    """progress.csv of a Meta-World run has rollout/pre_success_rate and post_success_rate,
    each the fraction of the iteration's episodes that succeeded (0, 1/4, ..., 1 here)."""
    from maml_rl.logger import read_progress
    from maml_rl.run import train

    config = _tiny_reach(f"log_dir={tmp_path}", "run_name=mw")
    run_dir = train(config, stdout=False)
    header, rows = read_progress(run_dir / "progress.csv")
    for key in ("rollout/pre_success_rate", "rollout/post_success_rate"):
        assert key in header
        assert float(rows[0][key]) in {0.0, 0.25, 0.5, 0.75, 1.0}


def test_the_meta_world_families_declare_their_sub_env_limit():
    from maml_rl.family import TaskFamily

    assert TaskFamily.make("MAML/MetaWorld-ML1-reach-v0").max_sub_envs == 100


def test_the_meta_world_presets_sample_on_ray():
    """The fastest back-end measured on 2 idle cores (docs/metaworld.md): 2 local Ray actors."""
    from maml_rl.config import load_config

    for name in ("ml1-reach", "ml1-push", "ml1-pick-place", "ml10", "ml45"):
        config = load_config(f"metaworld-{name}")
        assert (config.sampler, config.num_workers, config.ray_address) == ("ray", 2, "local")
