"""The custom task family example of the README runs, follows the protocol and trains."""

from __future__ import annotations

import pathlib
import re
import sys
import types

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

DOC = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def example() -> dict:
    text = DOC.read_text()
    section = text.split("## Your own task family", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
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
    from maml_rl.trainer import train

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
