"""The README's Python API example runs as printed; adapted policies act as the sampler does."""

from __future__ import annotations

import pathlib
import re

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    section = (ROOT / "README.md").read_text().split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_api"})
    assert "rollout returns before/after the step" in capsys.readouterr().out
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "checkpoint.pt").is_file()


def test_act_maps_actions_as_the_sampler_does():
    import gymnasium as gym
    import torch

    import maml_rl
    from maml_rl.family import TaskFamily, unnormalize_actions
    from maml_rl.settings import PolicySettings
    from maml_rl.trainer import make_policy

    config = maml_rl.TrainConfig(hidden_sizes=[8]).validate()
    env = maml_rl.make_env(config)
    policy = make_policy(TaskFamily.from_config(config), config.part(PolicySettings))
    task = env.unwrapped.sample_tasks(1, np.random.default_rng(0))[0]
    adapted = maml_rl.adapt(policy, config, task, num_steps=0, episodes=2)
    obs = np.array([[0.3, -0.2], [0.0, 0.1]], dtype=np.float32)
    mean, _ = policy(torch.from_numpy(obs))
    space = env.action_space
    assert isinstance(space, gym.spaces.Box)
    expected = unnormalize_actions(mean.detach().numpy(), space.low, space.high)
    np.testing.assert_allclose(adapted.act(obs), expected, rtol=1e-6)
    assert adapted.act(obs[0]).shape == (2,)
    assert np.all(
        np.abs(adapted.act(obs, deterministic=False, rng=np.random.default_rng(1))) <= 0.1
    )
