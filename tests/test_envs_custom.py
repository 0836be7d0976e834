"""The custom task family of the tutorial (docs/tutorials/custom-family.md) runs, follows the
protocol and trains; the horizon a batched env truncates at."""

from __future__ import annotations

import pathlib
import re
import sys
import types

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "tutorials" / "custom-family.md"


def example_code() -> str:
    """The tutorial's module ``my_package/line.py``, as it is printed."""
    section = DOC.read_text().split("<!-- file: my_package/line.py -->", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@pytest.fixture(scope="module")
def example() -> dict:
    code = example_code()
    module = types.ModuleType("docs_envs_example")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    try:
        exec(compile(code, str(DOC), "exec"), module.__dict__)
        yield module.__dict__
    finally:
        gym.registry.pop("MyFamilies/Line-v0", None)
        sys.modules.pop(module.__name__, None)


def test_example_runs_and_follows_protocol(example):
    env = gym.make("MyFamilies/Line-v0")
    check_env(env.unwrapped, skip_render_check=True)
    target = example["Target"]
    tasks = env.unwrapped.sample_tasks(4, np.random.default_rng(0))
    assert all(isinstance(t, target) for t in tasks)
    with pytest.raises(ValueError, match="outside"):
        env.unwrapped.reset_task(target(2.0))
    with pytest.raises(TypeError, match="expected a Target"):
        env.unwrapped.reset_task(0.5)

    venv = gym.make_vec("MyFamilies/Line-v0", num_envs=4, vectorization_mode="vector_entry_point")
    assert venv.unwrapped.max_episode_steps == 50
    obs, _ = venv.reset(seed=0, options={"tasks": tasks})
    singles = [gym.make("MyFamilies/Line-v0", task=t) for t in tasks]
    for i, single in enumerate(singles):
        single.reset()
        single.unwrapped._x = float(obs[i, 0])
    for step in range(50):
        obs, rewards, _, truncated, _ = venv.step(np.full((4, 1), 0.05))
        for i, single in enumerate(singles):
            o, r, _, tr, _ = single.step(np.array([0.05]))
            np.testing.assert_allclose(obs[i], o)
            assert rewards[i] == pytest.approx(r)
            assert truncated[i] == tr == (step == 49)
    obs2, rewards2, _, truncated2, _ = venv.step(np.full((4, 1), 0.05))
    np.testing.assert_array_equal(obs2, obs)
    assert (rewards2 == 0).all() and truncated2.all()


def test_example_family_trains_without_editing_the_package(example, tmp_path):
    from maml_rl.checkpoint import load_checkpoint
    from maml_rl.config import TrainConfig
    from maml_rl.run import train

    config = TrainConfig(
        env_id="MyFamilies/Line-v0",
        meta_batch_size=3,
        episodes_per_task=2,
        hidden_sizes=[8],
        num_iterations=1,
        progress_bar=False,
    ).validate()
    run = train(config, tmp_path / "line", stdout=False)
    assert load_checkpoint(run)["iteration"] == 1


def test_example_batched_env_seeds_sub_envs_as_single_envs(example):
    """docs/envs.md: with reset(seed=[s_0, ...]) sub-env i starts where a single env reset with
    seed=s_i starts."""
    tasks = gym.make("MyFamilies/Line-v0").unwrapped.sample_tasks(4, np.random.default_rng(0))
    seeds = [11, 12, 13, 14]
    venv = gym.make_vec("MyFamilies/Line-v0", num_envs=4, vectorization_mode="vector_entry_point")
    obs, _ = venv.reset(seed=seeds, options={"tasks": tasks})
    for i, (seed, task) in enumerate(zip(seeds, tasks)):
        single_obs, _ = gym.make("MyFamilies/Line-v0", task=task).reset(seed=seed)
        np.testing.assert_array_equal(obs[i], single_obs)


def test_a_family_without_batched_env_warns_that_it_is_slow(example):
    from maml_rl.family import PerformanceWarning, make_batched_env

    gym.register(id="MyFamilies/LineSync-v0", entry_point=example["LineEnv"], max_episode_steps=50)
    try:
        with pytest.warns(PerformanceWarning, match="no batched version"):
            env = make_batched_env("MyFamilies/LineSync-v0", 3, {})
        assert isinstance(env, gym.vector.SyncVectorEnv)
    finally:
        gym.registry.pop("MyFamilies/LineSync-v0", None)


@pytest.mark.parametrize("configured", [None, 10, 80])
def test_the_configured_horizon_wins_over_the_registrations(example, configured):
    """docs/tutorials/custom-family.md, "Which max_episode_steps wins": the config's
    max_episode_steps when set, else the registration's (which gym.make_vec passes to the
    vector_entry_point, over the constructor's default of 50), for batched and single envs."""
    from maml_rl.family import TaskFamily
    from maml_rl.sampler import run_episodes

    gym.register(
        id="MyFamilies/Line20-v0",
        entry_point=example["LineEnv"],
        vector_entry_point=example["LineVectorEnv"],
        max_episode_steps=20,
    )
    try:
        family = TaskFamily.make("MyFamilies/Line20-v0", max_episode_steps=configured)
        expected = configured or 20
        assert family.horizon == expected
        venv = family.make_batched_env(3)
        assert venv.unwrapped.max_episode_steps == expected
        tasks = family.sample_tasks(3, np.random.default_rng(0))
        episodes = run_episodes(
            venv,
            tasks,
            [0, 1, 2],
            family.horizon,
            lambda t, obs: np.zeros((3, 1), np.float32),
            family.action_mapping(),
        )
        assert episodes.mask.shape[0] == expected and episodes.mask.all()
        single, steps, done = family.make_env(), 0, False
        single.reset(seed=0)
        while not done:
            _, _, terminated, truncated, _ = single.step(np.array([0.0]))
            steps, done = steps + 1, terminated or truncated
        assert steps == expected
    finally:
        gym.registry.pop("MyFamilies/Line20-v0", None)


def test_a_users_module_is_found_in_the_current_folder(tmp_path, monkeypatch):
    """The ``maml-rl`` console script does not put the current folder on sys.path: the
    command line appends it, the library leaves sys.path alone."""
    from maml_rl.cli import add_current_folder_to_path
    from maml_rl.family import resolve_env_id

    package = tmp_path / "userfam_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "line.py").write_text(example_code())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        with pytest.raises(ValueError, match="cannot import"):  # the library edits no sys.path
            resolve_env_id("userfam_pkg.line:MyFamilies/Line-v0")
        assert str(tmp_path) not in sys.path
        add_current_folder_to_path()  # what the maml-rl command does first
        assert sys.path[-1] == str(tmp_path)
        assert resolve_env_id("userfam_pkg.line:MyFamilies/Line-v0") == "MyFamilies/Line-v0"
    finally:
        gym.registry.pop("MyFamilies/Line-v0", None)
        for name in ("userfam_pkg", "userfam_pkg.line"):
            sys.modules.pop(name, None)


@pytest.mark.slow
@pytest.mark.parametrize(
    "env_args",
    [
        ["env_id=my_package.line:MyFamilies/Line-v0"],
        ["env_id=MyFamilies/Line-v0", "env_import=my_package.line"],
    ],
)
def test_tutorial_commands_work_from_a_fresh_folder_after_a_non_editable_install(
    tmp_path_factory, env_args
):
    """The tutorial's two ways of naming the module, in a folder holding only
    my_package/line.py, with maml-rl installed as a wheel (not editable) and nothing on
    PYTHONPATH but that install."""
    import os
    import shutil
    import subprocess

    root = ROOT
    target = tmp_path_factory.getbasetemp() / "wheel_install"
    if not (target / "bin" / "maml-rl").exists():
        build = tmp_path_factory.mktemp("build")
        shutil.copytree(
            root, build / "src", ignore=shutil.ignore_patterns("results", ".git", "runs")
        )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "--target",
                str(target),
                str(build / "src"),
            ],
            check=True,
            timeout=300,
        )
    work = tmp_path_factory.mktemp("user_project")
    (work / "my_package").mkdir()
    (work / "my_package" / "__init__.py").write_text("")
    (work / "my_package" / "line.py").write_text(example_code())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)  # the wheel's files, ahead of any editable install
    short = ["num_iterations=1", "meta_batch_size=2", "episodes_per_task=2", "progress_bar=false"]
    result = subprocess.run(
        [str(target / "bin" / "maml-rl"), "train", "--quiet", "--set", *env_args, *short],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (
        str(target)
        in subprocess.run(
            [sys.executable, "-c", "import maml_rl; print(maml_rl.__file__)"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    (run,) = (work / "runs").iterdir()
    assert (run / "checkpoint.pt").is_file()


def test_a_resolved_family_holds_no_env_and_draws_tasks_without_one(monkeypatch):
    """A TaskFamily is described from one env when it is made; drawing tasks from a
    TaskSpace family, its spaces and its render modes then build no env at all."""
    import copy
    import pickle

    from maml_rl.family import TaskFamily

    family = TaskFamily.make("MAML/HalfCheetahVel-rllab-v0")
    built = []
    real_make = gym.make
    monkeypatch.setattr(gym, "make", lambda *a, **k: built.append(a) or real_make(*a, **k))
    assert len(family.training_tasks(seed=1, iteration=3, num_tasks=4)) == 4
    assert family.action_space.shape == (6,) and "rgb_array" in family.render_modes
    assert built == []
    # the same tasks as the env's own sample_tasks with the same generator
    env = real_make("MAML/HalfCheetahVel-rllab-v0")
    expected = env.unwrapped.sample_tasks(4, np.random.default_rng(7))
    assert family.sample_tasks(4, np.random.default_rng(7)) == expected
    env.close()
    # a picklable value: a Ray worker or a deep copy gets an equal family
    assert pickle.loads(pickle.dumps(family)) == family == copy.deepcopy(family)
