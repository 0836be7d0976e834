"""The discrete-action families: K-armed Bernoulli bandits and random tabular MDPs (RL^2)."""

from __future__ import annotations

import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import maml_envs
from maml_envs import BernoulliArms, TabularMDP
from maml_envs.tabular_mdp import sample_next_state

BANDIT_IDS = [f"MAML/BernoulliBandit-K{k}-v0" for k in (5, 10, 50)]
MDP_ID = "MAML/TabularMDP-v0"
DISCRETE_IDS = [*BANDIT_IDS, MDP_ID]
HORIZON = {**dict.fromkeys(BANDIT_IDS, 1), MDP_ID: 10}


def make_vec(env_id: str, num_envs: int, **kwargs):
    return gym.make_vec(
        env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs
    )


def tiny_mdp() -> TabularMDP:
    """S = 3, A = 2: action 0 moves s -> s + 1 (mod 3), action 1 stays; m[s, a] = 10 s + a."""
    transitions = np.zeros((3, 2, 3))
    for s in range(3):
        transitions[s, 0, (s + 1) % 3] = 1.0
        transitions[s, 1, s] = 1.0
    means = np.array([[10.0 * s + a for a in range(2)] for s in range(3)])
    return TabularMDP(3, 2, tuple(means.ravel().tolist()), tuple(transitions.ravel().tolist()))


# --- registration, spaces, checker -----------------------------------------------------------
@pytest.mark.parametrize("env_id", DISCRETE_IDS)
def test_registered_with_horizon_spaces_and_vector_entry_point(env_id):
    spec = gym.spec(env_id)
    assert spec.max_episode_steps == HORIZON[env_id]
    assert spec.vector_entry_point is not None
    env = gym.make(env_id)
    assert isinstance(env.unwrapped, maml_envs.TaskFamilyEnv)
    assert isinstance(env.action_space, gym.spaces.Discrete)
    if env_id == MDP_ID:
        assert env.action_space.n == 5 and env.observation_space.shape == (10,)
    else:
        assert env.action_space.n == int(env_id.split("-K")[1].split("-")[0])
        assert env.observation_space.shape == (1,)
    assert env.observation_space.dtype == np.float32


@pytest.mark.parametrize("env_id", DISCRETE_IDS)
def test_check_env_without_warnings(env_id):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gym.make(env_id)
        check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.parametrize("env_id", DISCRETE_IDS)
def test_vector_env_spaces_and_metadata(env_id):
    venv = make_vec(env_id, 3, num_threads=2)
    single = gym.make(env_id)
    unwrapped = venv.unwrapped
    assert isinstance(unwrapped, maml_envs.TaskFamilyVectorEnv)
    assert unwrapped.metadata["autoreset_mode"] is AutoresetMode.DISABLED
    assert unwrapped.max_episode_steps == HORIZON[env_id]
    assert venv.single_action_space == single.action_space
    assert venv.single_observation_space == single.observation_space
    assert venv.action_space == gym.spaces.MultiDiscrete([single.action_space.n] * 3)
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (3, *single.observation_space.shape) and obs.dtype == np.float32
    obs, reward, terminated, truncated, info = venv.step(venv.action_space.sample())
    assert reward.dtype == np.float64 and reward.shape == (3,)
    assert terminated.dtype == bool and truncated.dtype == bool
    assert venv.observation_space.contains(obs)
    single.reset(seed=0)
    assert set(info) == {key for key in single.step(0)[4] if key.startswith("reward_")}


# --- tasks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", DISCRETE_IDS)
def test_sample_tasks_deterministic_valid_and_picklable(env_id):
    env = gym.make(env_id).unwrapped
    tasks = env.sample_tasks(20, np.random.default_rng(3))
    assert tasks == env.sample_tasks(20, np.random.default_rng(3))
    assert len(set(tasks)) == 20
    for task in tasks:
        env.task_space.validate(task)
        assert pickle.loads(pickle.dumps(task)) == task
        assert task.as_array().dtype == np.float64
        assert task.as_array().shape == (env.task_space.task_dim,)
    assert env.sample_tasks(0, np.random.default_rng(0)) == []


def test_bandit_task_distribution():
    space = gym.make("MAML/BernoulliBandit-K10-v0").unwrapped.task_space
    p = np.array([t.probabilities for t in space.sample(2000, np.random.default_rng(0))])
    assert p.shape == (2000, 10) and p.min() >= 0.0 and p.max() < 1.0
    # uniform on [0, 1): mean 1/2, variance 1/12; 20000 draws give standard errors 0.002, 0.0006
    assert p.mean() == pytest.approx(0.5, abs=0.01)
    assert p.var() == pytest.approx(1 / 12, abs=0.003)
    assert space.default == BernoulliArms((0.5,) * 10)


def test_mdp_task_distribution_rows_sum_to_one():
    space = gym.make(MDP_ID).unwrapped.task_space
    tasks = space.sample(400, np.random.default_rng(1))
    transitions = np.stack([t.transition_table() for t in tasks])
    means = np.stack([t.reward_table() for t in tasks])
    assert transitions.shape == (400, 10, 5, 10) and means.shape == (400, 10, 5)
    assert (transitions >= 0).all()
    np.testing.assert_allclose(transitions.sum(-1), 1.0, rtol=0, atol=1e-12)
    # Dirichlet(1, ..., 1) over 10 states: each P(s'|s, a) has mean 1/10 and variance
    # 9 / (100 * 11); 200000 draws per moment
    assert transitions.mean() == pytest.approx(0.1, abs=1e-12)  # rows sum to 1
    assert transitions.var() == pytest.approx(9 / 1100, abs=3e-4)
    # mean rewards N(1, 1): 20000 draws, standard error 0.007
    assert means.mean() == pytest.approx(1.0, abs=0.03) and means.std() == pytest.approx(
        1, abs=0.03
    )
    default = space.default
    np.testing.assert_array_equal(default.transition_table(), np.full((10, 5, 10), 0.1))
    np.testing.assert_array_equal(default.reward_table(), np.zeros((10, 5)))
    assert repr(default) == "TabularMDP(num_states=10, num_actions=5)"


def test_bad_tasks_raise():
    bandit = gym.make("MAML/BernoulliBandit-K5-v0").unwrapped
    with pytest.raises(TypeError, match="expected a BernoulliArms"):
        bandit.reset_task(tiny_mdp())
    with pytest.raises(ValueError, match="tuple of 5 floats"):
        bandit.reset_task(BernoulliArms((0.5,) * 4))
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        bandit.reset_task(BernoulliArms((0.5, 0.5, 0.5, 0.5, 1.5)))
    with pytest.raises(ValueError, match="non-finite"):
        bandit.reset_task(BernoulliArms((0.5, 0.5, 0.5, 0.5, float("nan"))))
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        gym.make("MAML/BernoulliBandit-K5-v0", k=0)
    mdp = gym.make(MDP_ID, num_states=3, num_actions=2).unwrapped
    mdp.reset_task(tiny_mdp())
    with pytest.raises(ValueError, match="MDP has 3 states and 2 actions, the family 10 and 5"):
        gym.make(MDP_ID).unwrapped.reset_task(tiny_mdp())
    task = tiny_mdp()
    skewed = list(task.transitions)
    skewed[0] += 1e-6
    with pytest.raises(ValueError, match="rows must sum to 1"):
        mdp.reset_task(TabularMDP(3, 2, task.reward_means, tuple(skewed)))
    negative = list(task.transitions)
    negative[0], negative[1] = -0.5, 1.5
    with pytest.raises(ValueError, match=">= 0"):
        mdp.reset_task(TabularMDP(3, 2, task.reward_means, tuple(negative)))


@pytest.mark.parametrize("env_id", DISCRETE_IDS)
def test_bad_actions_raise(env_id):
    env = gym.make(env_id)
    env.reset(seed=0)
    n = env.action_space.n
    with pytest.raises(ValueError, match="integer dtype"):
        env.step(1.0)
    with pytest.raises(ValueError, match=rf"action {n} outside the {n} actions"):
        env.step(n)
    with pytest.raises(ValueError, match="action -1 outside"):
        env.step(-1)
    with pytest.raises(ValueError, match="action has shape"):
        env.step(np.array([0]))
    venv = make_vec(env_id, 3)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"action has shape \(2,\)"):
        venv.step(np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match="integer dtype"):
        venv.step(np.zeros(3))
    with pytest.raises(ValueError, match=f"action {n} outside"):
        venv.step(np.array([0, n, 0]))


# --- batched == single, seeding --------------------------------------------------------------
def _run_singles_and_batched(env_id, tasks, seeds, actions, env_kwargs=None):
    """Step N singles (reset with seed s_i) and the batched env (reset with the list of seeds)
    with the same (T, N) actions; compare step for step, finished sub-envs frozen."""
    env_kwargs = env_kwargs or {}
    n = len(tasks)
    venv = make_vec(env_id, n, **env_kwargs)
    obs, _ = venv.reset(seed=list(seeds), options={"tasks": tasks})
    singles = [gym.make(env_id, task=task, **env_kwargs) for task in tasks]
    for i, (env, seed) in enumerate(zip(singles, seeds)):
        np.testing.assert_array_equal(obs[i], env.reset(seed=seed)[0])
    ended = [False] * n
    final = [None] * n
    rewards_seen = np.zeros((len(actions), n))
    for t, step_actions in enumerate(actions):
        obs, rewards, terminated, truncated, info = venv.step(step_actions)
        for i, env in enumerate(singles):
            if ended[i]:
                np.testing.assert_array_equal(obs[i], final[i])
                assert rewards[i] == 0.0
                assert all(value[i] == 0.0 for value in info.values())  # the reward terms
                continue
            o, r, te, tr, inf = env.step(step_actions[i])
            np.testing.assert_array_equal(obs[i], o)
            assert rewards[i] == r, (t, i)
            assert (terminated[i], truncated[i]) == (te, tr), (t, i)
            for key, value in inf.items():
                if key.startswith("reward_"):
                    assert info[key][i] == value, (key, t, i)
            rewards_seen[t, i] = r
            if te or tr:
                ended[i], final[i] = True, o
    return venv, rewards_seen


@pytest.mark.parametrize("env_id", BANDIT_IDS)
def test_vector_bandit_equals_singles(env_id):
    single = gym.make(env_id).unwrapped
    tasks = single.sample_tasks(6, np.random.default_rng(4))
    rng = np.random.default_rng(5)
    for seeds in ([11, 12, 13, 14, 15, 16], [7, 7, 7, 8, 9, 10]):
        actions = rng.integers(0, single.k, (3, 6))  # steps after the first: frozen sub-envs
        venv, _ = _run_singles_and_batched(env_id, tasks, seeds, actions)
        assert venv.unwrapped.finished.all()
        assert venv.unwrapped.elapsed_steps.tolist() == [1] * 6


def test_vector_mdp_equals_singles_past_the_horizon():
    single = gym.make(MDP_ID).unwrapped
    tasks = single.sample_tasks(5, np.random.default_rng(6))
    actions = np.random.default_rng(7).integers(0, 5, (13, 5))
    venv, rewards = _run_singles_and_batched(MDP_ID, tasks, [21, 22, 23, 24, 25], actions)
    assert venv.unwrapped.finished.all() and (rewards[10:] == 0).all()
    assert len({tuple(row) for row in rewards[:10].T}) == 5


def test_vector_mdp_equals_singles_on_the_tiny_mdp_with_a_shorter_horizon():
    kwargs = {"num_states": 3, "num_actions": 2, "max_episode_steps": 4}
    actions = np.random.default_rng(8).integers(0, 2, (6, 4))
    venv, _ = _run_singles_and_batched(MDP_ID, [tiny_mdp()] * 4, [1, 2, 3, 4], actions, kwargs)
    assert venv.unwrapped.elapsed_steps.tolist() == [4] * 4


def test_a_sub_envs_episode_depends_on_its_seed_only():
    """With a list seed, sub-env i's rewards do not depend on N or on the other sub-envs."""
    task = gym.make(MDP_ID).unwrapped.sample_tasks(1, np.random.default_rng(9))[0]
    actions = np.random.default_rng(10).integers(0, 5, (10, 4))

    def run(seeds, columns):
        venv = make_vec(MDP_ID, len(seeds))
        venv.reset(seed=seeds, options={"task": task})
        return np.stack([venv.step(actions[t, columns])[1] for t in range(10)])

    both = run([5, 6, 7, 8], [0, 1, 2, 3])
    np.testing.assert_array_equal(run([7], [2])[:, 0], both[:, 2])
    np.testing.assert_array_equal(run([8, 5], [3, 0]), both[:, [3, 0]])


@pytest.mark.parametrize("env_id", DISCRETE_IDS)
def test_same_seed_same_rollout(env_id):
    task = gym.make(env_id).unwrapped.sample_tasks(1, np.random.default_rng(1))[0]

    def single(seed):
        env = gym.make(env_id, task=task)
        env.action_space.seed(3)
        rewards = []
        for episode in range(5):
            env.reset(seed=seed if episode == 0 else None)
            done = False
            while not done:
                _, r, te, tr, _ = env.step(env.action_space.sample())
                rewards.append(r)
                done = te or tr
        return np.array(rewards)

    def batched(seed):
        venv = make_vec(env_id, 8)
        venv.reset(seed=seed, options={"task": task})
        venv.action_space.seed(3)
        return np.stack([venv.step(venv.action_space.sample())[1] for _ in range(HORIZON[env_id])])

    np.testing.assert_array_equal(single(1), single(1))
    assert not np.array_equal(single(1), single(2))
    np.testing.assert_array_equal(batched(1), batched(1))
    assert not np.array_equal(batched(1), batched(2))


# --- rewards and transitions by hand -----------------------------------------------------------
def test_bandit_empirical_arm_means_match_the_task():
    """20000 pulls of each arm: the standard error of a mean is sqrt(p (1 - p) / 20000) <= 0.0036,
    so a tolerance of 0.015 is > 4 standard errors (a correct env fails it for < 1e-4 of seeds);
    a wrong arm or a flipped coin (1 - p) misses it by >= 0.2 here. p = 0 and p = 1 are exact."""
    probabilities = (0.0, 0.1, 0.5, 0.9, 1.0)
    pulls = 20000
    venv = make_vec("MAML/BernoulliBandit-K5-v0", pulls)
    for arm, p in enumerate(probabilities):
        venv.reset(seed=arm, options={"task": BernoulliArms(probabilities)})
        _, rewards, terminated, truncated, info = venv.step(np.full(pulls, arm))
        assert terminated.all() and truncated.all()
        assert set(np.unique(rewards)) <= {0.0, 1.0}
        np.testing.assert_array_equal(info["reward_pull"], rewards)
        assert rewards.mean() == pytest.approx(p, abs=0.015)
    # the single env: its coin u = np_random.random(), reward 1 exactly when u < p_a
    env = gym.make("MAML/BernoulliBandit-K5-v0", task=BernoulliArms(probabilities))
    coins = np.random.default_rng(123)
    for step in range(20):
        arm = step % 5
        env.reset(seed=123 if step == 0 else None)
        _, reward, terminated, truncated, _ = env.step(arm)
        assert reward == float(coins.random() < probabilities[arm])
        assert terminated and truncated  # one pull; the registered horizon is 1


def test_bandit_episode_is_one_pull():
    venv = make_vec("MAML/BernoulliBandit-K5-v0", 2)
    obs, _ = venv.reset(seed=0, options={"task": BernoulliArms((1.0, 0.0, 0.0, 0.0, 0.0))})
    np.testing.assert_array_equal(obs, np.zeros((2, 1), dtype=np.float32))
    _, rewards, terminated, _, _ = venv.step(np.array([0, 1]))
    np.testing.assert_array_equal(rewards, [1.0, 0.0])
    assert terminated.all() and venv.unwrapped.finished.all()
    _, rewards, _, _, _ = venv.step(np.array([0, 0]))  # finished: ignored, reward 0
    np.testing.assert_array_equal(rewards, [0.0, 0.0])


def test_sample_next_state_by_hand():
    p = np.array([0.2, 0.5, 0.3])  # F = (0.2, 0.7, 1.0); the first s with u < F(s)
    u = np.array([0.0, 0.19, 0.2, 0.69, 0.71, 0.999999])
    np.testing.assert_array_equal(sample_next_state(np.tile(p, (6, 1)), u), [0, 0, 1, 1, 2, 2])
    assert sample_next_state(p, np.float64(0.5)) == 1
    # a state of probability 0 is never drawn, even at the boundary u = F(s)
    zero = np.array([0.5, 0.0, 0.5])
    np.testing.assert_array_equal(
        sample_next_state(np.tile(zero, (3, 1)), np.array([0.4999, 0.5, 0.9])), [0, 2, 2]
    )


def test_mdp_transition_frequencies_match_the_row():
    """20000 sub-envs take one step from state 0: the next-state frequencies have standard
    errors <= 0.0036, so 0.015 is > 4 of them (and far below a misplaced row's error)."""
    n = 20000
    row = np.array([0.2, 0.5, 0.3])
    transitions = np.zeros((3, 2, 3))
    transitions[:, :, :] = [1 / 3, 1 / 3, 1 / 3]
    transitions[0, 1] = row
    task = TabularMDP(3, 2, (0.0,) * 6, tuple(transitions.ravel().tolist()))
    venv = make_vec(MDP_ID, n, num_states=3, num_actions=2)
    venv.reset(seed=0, options={"task": task})
    obs, _, _, _, _ = venv.step(np.ones(n, dtype=np.int64))
    counts = obs.sum(0) / n
    np.testing.assert_allclose(counts, row, atol=0.015)
    np.testing.assert_array_equal(venv.unwrapped.states, obs.argmax(1))


def test_mdp_episode_by_hand():
    """The tiny MDP: action 0 moves s -> s + 1 (mod 3), action 1 stays, m[s, a] = 10 s + a; the
    reward noise z_t is the first of the two draws the env takes from np_random per step."""
    env = gym.make(MDP_ID, num_states=3, num_actions=2, max_episode_steps=6, task=tiny_mdp())
    obs, info = env.reset(seed=42)
    np.testing.assert_array_equal(obs, [1.0, 0.0, 0.0])
    assert info["state"] == 0
    draws = np.random.default_rng(42)
    actions = [0, 0, 1, 0, 1, 1]
    states = [1, 2, 2, 0, 0, 0]
    means = [0.0, 10.0, 21.0, 20.0, 1.0, 1.0]  # m[s_t, a_t] with s_t = 0, 1, 2, 2, 0, 0
    for t, (action, state, mean) in enumerate(zip(actions, states, means)):
        z = draws.standard_normal()
        draws.random()  # the next-state draw (deterministic rows here)
        obs, reward, terminated, truncated, info = env.step(action)
        np.testing.assert_array_equal(obs, np.eye(3, dtype=np.float32)[state])
        assert info["state"] == state and env.unwrapped.state == state
        assert info["reward_mean"] == mean
        assert info["reward_noise"] == z
        assert reward == mean + z
        assert not terminated and truncated == (t == 5)


@pytest.mark.parametrize("env_id", DISCRETE_IDS)
def test_single_env_pickles_with_its_task(env_id):
    task = gym.make(env_id).unwrapped.sample_tasks(1, np.random.default_rng(9))[0]
    env = gym.make(env_id, task=task).unwrapped
    clone = pickle.loads(pickle.dumps(env))
    assert type(clone) is type(env) and clone.task == task
