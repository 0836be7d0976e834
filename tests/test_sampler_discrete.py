"""Sampling a categorical policy on the discrete-action families: the batched sampler equals a
per-episode reference with the same seeds, shards give the same tasks' episodes, the Gumbel-max
draws follow softmax(logits), and indices are shifted by the space's ``start``."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import maml_envs  # noqa: F401  (registers the families)
from maml_rl.family import ActionMapping, TaskFamily
from maml_rl.policy import CategoricalMLPPolicy, replicate
from maml_rl.sampler import VectorSampler
from maml_rl.seeding import episode_seeds, task_seeds
from tests.conftest import assert_shards_make_the_whole_batch

MDP = "MAML/TabularMDP-v0"
BANDIT = "MAML/BernoulliBandit-K5-v0"


def perturbed_task_params(policy, num_tasks, seed=0):
    """One parameter set per task: theta plus a little task-specific noise."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: v.detach() + 0.3 * torch.randn(num_tasks, *v.shape, generator=g)
        for k, v in policy.params().items()
    }


def mdp_setup(num_tasks=3):
    torch.manual_seed(0)
    policy = CategoricalMLPPolicy(10, 5, (16,))
    tasks = gym.make(MDP).unwrapped.sample_tasks(num_tasks, np.random.default_rng(0))
    return policy, tasks, perturbed_task_params(policy, num_tasks)


def reference_episodes(env_id, policy, tasks, params, k, seed):
    """Each episode on its own single env, written out step by step from the sampler's
    contract: task m's uniforms u [H, K, n] come from a torch generator seeded with its task
    seed, episode k's action at step t is argmax(logits + g), g = -log(-log u[t, k]), and its env
    is reset with ``episode_seeds(task_seed, K)[k]``. Returns actions, rewards, lengths."""
    horizon = gym.spec(env_id).max_episode_steps
    n = gym.make(env_id).action_space.n
    out = []
    for m, (task, task_seed) in enumerate(zip(tasks, task_seeds(seed, len(tasks)))):
        u = torch.rand(horizon, k, n, generator=torch.Generator().manual_seed(task_seed))
        gumbel = -torch.log(-torch.log(u))
        task_params = {name: p[m] for name, p in params.items()}
        for j, episode_seed in enumerate(episode_seeds(task_seed, k)):
            env = gym.make(env_id, task=task)
            obs, _ = env.reset(seed=episode_seed)
            actions, rewards, observations = [], [], []
            for t in range(horizon):
                with torch.no_grad():
                    logits = policy(torch.as_tensor(obs), task_params)
                action = int((logits + gumbel[t, j]).argmax())
                observations.append(obs)
                obs, reward, terminated, truncated, _ = env.step(action)
                actions.append(action)
                rewards.append(reward)
                if terminated or truncated:
                    break
            out.append((m, j, np.array(observations), actions, rewards))
    return out


@pytest.mark.parametrize("env_id", [MDP, BANDIT])
def test_batched_sampling_equals_the_per_episode_reference(env_id):
    torch.manual_seed(0)
    family = TaskFamily.make(env_id)
    obs_dim = family.observation_space.shape[0]
    policy = CategoricalMLPPolicy(obs_dim, family.action_space.n, (16,))
    tasks = family.sample_tasks(3, np.random.default_rng(1))
    params = perturbed_task_params(policy, 3)
    batch = VectorSampler(family, policy).sample(tasks, params, 4, seed=7)
    assert batch.actions.dtype == torch.int64
    assert batch.actions.shape == batch.mask.shape == (family.horizon, 3, 4)
    for m, j, observations, actions, rewards in reference_episodes(
        env_id, policy, tasks, params, 4, seed=7
    ):
        length = len(actions)
        assert int(batch.episode_lengths[m, j]) == length
        assert batch.actions[:length, m, j].tolist() == actions
        np.testing.assert_array_equal(batch.observations[:length, m, j].numpy(), observations)
        np.testing.assert_allclose(batch.rewards[:length, m, j].numpy(), rewards, rtol=1e-6)


def test_actions_vary_and_rows_after_the_end_are_zero():
    family = TaskFamily.make(BANDIT, max_episode_steps=3)  # the bandit ends after one pull
    policy = CategoricalMLPPolicy(1, 5, (8,))
    tasks = family.sample_tasks(2, np.random.default_rng(0))
    batch = VectorSampler(family, policy).sample(tasks, policy.params(), 50, seed=1)
    assert batch.actions.shape == (1, 2, 50)  # all ended at step 1: T = 1
    assert set(batch.actions.unique().tolist()) == set(range(5))
    mdp_policy, mdp_tasks, params = mdp_setup(2)
    mdp = VectorSampler(TaskFamily.make(MDP, max_episode_steps=4), mdp_policy)
    batch = mdp.sample(mdp_tasks, params, 3, seed=2)
    assert batch.actions.shape == (4, 2, 3) and bool((batch.mask == 1).all())
    assert bool(((batch.actions >= 0) & (batch.actions < 5)).all())


def test_shards_of_the_meta_batch_equal_the_whole_batch():
    policy, tasks, params = mdp_setup(num_tasks=4)
    sampler = VectorSampler(TaskFamily.make(MDP), policy)
    assert_shards_make_the_whole_batch(sampler, tasks, params)
    # one policy for all tasks (unbatched parameters) too
    theta = policy.params()
    whole = sampler.sample(tasks, theta, 2, seed=9)
    part = sampler.sample_shard(tasks, theta, 2, task_seeds(9, 4), [2])
    assert torch.equal(whole.actions[:, 2:3], part.actions)


def test_gumbel_max_draws_follow_the_softmax_of_the_logits():
    """The bandit's observation is 0, so the logits are the last layer's bias z: 4000 pulls
    are a sample of softmax(z) (each frequency within 4 standard errors, <= 0.032)."""
    policy = CategoricalMLPPolicy(1, 5, (8,))
    params = {k: v.detach().clone() for k, v in policy.params().items()}
    z = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    params["layers.1.bias"] = z
    family = TaskFamily.make(BANDIT)
    task = family.sample_tasks(1, np.random.default_rng(0))
    batch = VectorSampler(family, policy).sample(task, params, 4000, seed=3)
    counts = torch.bincount(batch.actions.flatten(), minlength=5).double() / 4000
    expected = torch.softmax(z.double(), 0)
    assert torch.allclose(counts, expected, atol=4 * float((0.25 / 4000) ** 0.5)), counts


def test_per_task_parameters_drive_each_task():
    policy = CategoricalMLPPolicy(1, 5, (8,))
    params = {k: v.detach().clone() for k, v in replicate(policy.params(), 2).items()}
    params["layers.1.bias"] = torch.tensor([[20.0, 0, 0, 0, 0], [0, 0, 0, 0, 20.0]])
    family = TaskFamily.make(BANDIT)
    tasks = family.sample_tasks(2, np.random.default_rng(0))
    sampler = VectorSampler(family, policy)
    batch = sampler.sample(tasks, params, 20, seed=0)
    assert (batch.actions[0, 0] == 0).all() and (batch.actions[0, 1] == 4).all()
    with pytest.raises(ValueError, match="task sets"):
        sampler.sample(tasks + tasks, params, 3, seed=0)


def test_discrete_action_mapping_adds_the_start():
    mapping = ActionMapping(gym.spaces.Discrete(3, start=2), normalize_actions=True)
    assert mapping.shape == () and mapping.dtype == np.int64
    mapped = mapping(np.array([0, 2, 1]))
    assert mapped.dtype == np.int64 and mapped.tolist() == [2, 4, 3]
    assert ActionMapping(gym.spaces.Discrete(4), False)(np.array([3])).tolist() == [3]
    box = ActionMapping(gym.spaces.Box(-1.0, 1.0, (6,), np.float32), True)
    assert box.shape == (6,) and box.dtype == np.float32
