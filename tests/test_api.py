"""Adapted policies act as the sampler does (the Python example of docs/getting-started.md runs
in tests/test_docs.py)."""

from __future__ import annotations

import pathlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


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
