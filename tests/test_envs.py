"""Tests of the envs package: registration, task protocol, rewards, dynamics, batched envs."""

from __future__ import annotations

import pickle

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import maml_envs
from maml_envs import Direction, GoalPosition, GoalVelocity
from maml_envs.ant import contact_cost
from tests.conftest import make_vec, some_tasks

ALL_IDS = [
    "MAML/Navigation2D-v0",
    "MAML/HalfCheetahVel-v0",
    "MAML/HalfCheetahDir-v0",
    "MAML/AntVel-v0",
    "MAML/AntDir-v0",
    "MAML/AntGoal-v0",
]
MUJOCO_IDS = ALL_IDS[1:]
HORIZON = {"MAML/Navigation2D-v0": 100, **dict.fromkeys(MUJOCO_IDS, 200)}


# --- registration and checker -------------------------------------------------------------
@pytest.mark.parametrize("env_id", ALL_IDS)
def test_registered_with_horizon_and_vector_entry_point(env_id):
    spec = gym.spec(env_id)
    assert spec.max_episode_steps == HORIZON[env_id]
    assert spec.vector_entry_point is not None
    env = gym.make(env_id)
    assert isinstance(env.unwrapped, maml_envs.TaskFamilyEnv)


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_check_env(env_id):
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)


def test_observation_sizes():
    assert gym.make("MAML/Navigation2D-v0").observation_space.dtype == np.float32
    assert gym.make("MAML/HalfCheetahVel-v0").observation_space.shape == (17,)
    assert gym.make("MAML/AntVel-v0").observation_space.shape == (27,)
    assert gym.make("MAML/AntGoal-v0").observation_space.shape == (29,)


# --- task protocol ------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", ALL_IDS)
def test_sample_tasks_deterministic_and_valid(env_id):
    env = gym.make(env_id).unwrapped
    tasks = env.sample_tasks(50, np.random.default_rng(3))
    assert tasks == env.sample_tasks(50, np.random.default_rng(3))
    assert len(tasks) == 50 and len(set(tasks)) > 1
    for task in tasks:
        env.task_space.validate(task)
        assert pickle.loads(pickle.dumps(task)) == task
        assert task.as_array().dtype == np.float64
    assert env.sample_tasks(0, np.random.default_rng(0)) == []


def test_task_ranges():
    rng = np.random.default_rng(0)
    velocities = [
        t.velocity for t in gym.make("MAML/HalfCheetahVel-v0").unwrapped.sample_tasks(2000, rng)
    ]
    assert 0.0 <= min(velocities) < 0.05 and 1.95 < max(velocities) <= 2.0
    directions = {t.direction for t in gym.make("MAML/AntDir-v0").unwrapped.sample_tasks(100, rng)}
    assert directions == {-1, 1}
    goals = np.array(
        [t.as_array() for t in gym.make("MAML/AntGoal-v0").unwrapped.sample_tasks(2000, rng)]
    )
    assert goals.min() >= -3 and goals.max() <= 3 and goals.min() < -2.9 and goals.max() > 2.9
    wide = gym.make("MAML/HalfCheetahVel-v0", low=-1.0, high=4.0).unwrapped
    assert wide.task == GoalVelocity(1.5)
    wide.reset_task(GoalVelocity(3.5))


def test_task_setting_paths_and_persistence():
    env = gym.make("MAML/HalfCheetahVel-v0", task=GoalVelocity(0.3))
    assert env.unwrapped.task == GoalVelocity(0.3)
    env.reset(seed=0)
    assert env.unwrapped.task == GoalVelocity(0.3)
    env.unwrapped.reset_task(GoalVelocity(1.2))
    env.reset(seed=1)
    assert env.unwrapped.task == GoalVelocity(1.2)
    env.reset(options={"task": GoalVelocity(0.7)})
    env.reset()
    assert env.unwrapped.task == GoalVelocity(0.7)
    assert gym.make("MAML/AntDir-v0").unwrapped.task == Direction(1)
    assert gym.make("MAML/Navigation2D-v0").unwrapped.task == GoalPosition(0.5, 0.5)


def test_task_repr_hash_and_array():
    task = GoalPosition(0.1, -0.2)
    assert repr(task) == "GoalPosition(x=0.1, y=-0.2)"
    assert hash(task) == hash(GoalPosition(0.1, -0.2))
    np.testing.assert_array_equal(task.as_array(), [0.1, -0.2])
    np.testing.assert_array_equal(Direction(-1).as_array(), [-1.0])
    with pytest.raises(AttributeError):
        task.x = 1.0  # type: ignore[misc]


# --- bad inputs ---------------------------------------------------------------------------
def test_bad_tasks_raise():
    cheetah = gym.make("MAML/HalfCheetahVel-v0").unwrapped
    with pytest.raises(TypeError, match="expected a GoalVelocity"):
        cheetah.reset_task(Direction(1))
    with pytest.raises(ValueError, match=r"goal velocity 2.5 outside \[0.0, 2.0\]"):
        cheetah.reset_task(GoalVelocity(2.5))
    with pytest.raises(ValueError, match="outside"):
        cheetah.reset(options={"task": GoalVelocity(float("nan"))})
    with pytest.raises(ValueError, match="direction must be the int -1 or \\+1"):
        gym.make("MAML/AntDir-v0").unwrapped.reset_task(Direction(0))
    with pytest.raises(ValueError, match="direction must be"):
        gym.make("MAML/HalfCheetahDir-v0", task=Direction(1.0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"goal y=0\.6 outside"):
        gym.make("MAML/Navigation2D-v0", task=GoalPosition(0.0, 0.6))
    with pytest.raises(ValueError, match="non-negative int"):
        cheetah.sample_tasks(-1, np.random.default_rng(0))
    with pytest.raises(TypeError, match=r"numpy\.random\.Generator"):
        cheetah.sample_tasks(3, 0)
    with pytest.raises(ValueError, match="range is empty"):
        gym.make("MAML/AntVel-v0", low=2.0, high=1.0)


@pytest.mark.parametrize(
    "env_id", ["MAML/Navigation2D-v0", "MAML/HalfCheetahDir-v0", "MAML/AntGoal-v0"]
)
def test_bad_actions_raise(env_id):
    env = gym.make(env_id)
    env.reset(seed=0)
    dim = env.action_space.shape[0]
    with pytest.raises(ValueError, match="action has shape"):
        env.step(np.zeros(dim + 1))
    with pytest.raises(ValueError, match="non-finite"):
        env.step(np.full(dim, np.nan))
    venv = make_vec(env_id, 3)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"action has shape \(3,\)"):
        venv.step(np.zeros(3))
    with pytest.raises(ValueError, match="non-finite"):
        venv.step(np.full((3, dim), np.inf))
    with pytest.raises(ValueError, match="got 2 tasks for 3 sub-environments"):
        venv.reset(options={"tasks": some_tasks(env_id, 2)})
    with pytest.raises(TypeError, match="expected a"):
        venv.reset(options={"tasks": [object()] * 3})


# --- determinism ----------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", ALL_IDS)
def test_same_seed_same_rollout_and_task_changes_reward(env_id):
    task_a, task_b = some_tasks(env_id, 2, seed=1)
    if isinstance(task_a, Direction):
        task_a, task_b = Direction(1), Direction(-1)

    def run(task):
        env = gym.make(env_id, task=task)
        obs, _ = env.reset(seed=7)
        env.action_space.seed(7)
        history = [obs]
        rewards = []
        for _ in range(20):
            obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            history.append(obs)
            rewards.append(reward)
            if terminated or truncated:
                break
        return np.array(history), np.array(rewards)

    obs1, rew1 = run(task_a)
    obs2, rew2 = run(task_a)
    np.testing.assert_array_equal(obs1, obs2)
    np.testing.assert_array_equal(rew1, rew2)
    obs3, rew3 = run(task_b)
    np.testing.assert_array_equal(obs1, obs3)  # the task changes the reward only
    assert not np.allclose(rew1, rew3)


# --- rewards by hand ------------------------------------------------------------------------
def test_navigation_reward_and_termination_by_hand():
    env = gym.make("MAML/Navigation2D-v0", task=GoalPosition(0.25, -0.1))
    env.reset(seed=0)
    obs, reward, terminated, _, info = env.step(np.array([0.5, -0.05]))  # x clipped to 0.1
    np.testing.assert_allclose(obs, [0.1, -0.05])
    assert reward == pytest.approx(-np.hypot(0.15, 0.05))
    assert not terminated and info["reward_distance"] == reward
    env.step(np.array([0.1, -0.05]))
    obs, reward, terminated, _, _ = env.step(np.array([0.045, 0.0]))
    assert terminated and reward == pytest.approx(-np.hypot(0.005, 0.0))


def _cheetah_step_by_hand(env_id, task, expected):
    env = gym.make(env_id, task=task)
    env.reset(seed=3)
    rng = np.random.default_rng(0)
    data = env.unwrapped.data
    for _ in range(10):
        action = rng.uniform(-1, 1, 6)
        x_before = data.qpos[0]
        _, reward, _, _, info = env.step(action)
        v = (data.qpos[0] - x_before) / env.unwrapped.dt
        assert info["x_velocity"] == pytest.approx(v)
        assert reward == pytest.approx(expected(v, action))
        assert reward == pytest.approx(info["reward_forward"] + info["reward_ctrl"])


def test_half_cheetah_rewards_by_hand():
    _cheetah_step_by_hand(
        "MAML/HalfCheetahVel-v0",
        GoalVelocity(1.3),
        lambda v, a: -abs(v - 1.3) - 0.05 * np.sum(a**2),
    )
    _cheetah_step_by_hand(
        "MAML/HalfCheetahDir-v0", Direction(-1), lambda v, a: -v - 0.05 * np.sum(a**2)
    )


def _cfrc_contact_cost(model, data_before_last_substep):
    """Contact cost from MuJoCo's cfrc_ext (mj_rnePostConstraint) at the given state."""
    d = data_before_last_substep
    mujoco.mj_forward(model, d)
    mujoco.mj_rnePostConstraint(model, d)
    return 5e-4 * np.sum(np.square(np.clip(d.cfrc_ext, -1, 1)))


@pytest.mark.parametrize(
    ("env_id", "task", "task_reward"),
    [
        ("MAML/AntVel-v0", GoalVelocity(0.8), lambda v, xy: -abs(v - 0.8) + 1.0),
        ("MAML/AntDir-v0", Direction(-1), lambda v, xy: -v),
        (
            "MAML/AntGoal-v0",
            GoalPosition(1.0, -2.0),
            lambda v, xy: -abs(xy[0] - 1.0) - abs(xy[1] + 2.0) + 4.0,
        ),
    ],
)
def test_ant_rewards_by_hand(env_id, task, task_reward):
    env = gym.make(env_id, task=task)
    env.reset(seed=2)
    unwrapped = env.unwrapped
    model, data = unwrapped.model, unwrapped.data
    shadow = mujoco.MjData(model)
    rng = np.random.default_rng(0)
    contact_seen = False
    for _ in range(40):
        action = rng.uniform(-1, 1, 8)
        # replay the step on a copy to get the state before the last physics substep
        mujoco.mj_copyData(shadow, model, data)
        shadow.ctrl[:] = action
        mujoco.mj_step(model, shadow, nstep=unwrapped.frame_skip - 1)
        x_before = data.qpos[0]
        _, reward, terminated, _, info = env.step(action)
        v = (data.qpos[0] - x_before) / unwrapped.dt
        contact = _cfrc_contact_cost(model, shadow)
        contact_seen |= contact > 0
        expected = task_reward(v, data.qpos[:2]) - 0.005 * np.sum(action**2) - contact + 0.05
        assert info["reward_contact"] == pytest.approx(-contact, rel=1e-9, abs=1e-12)
        assert reward == pytest.approx(expected, rel=1e-9)
        terms = [val for key, val in info.items() if key.startswith("reward_")]
        assert reward == pytest.approx(sum(terms), rel=1e-12)
        if terminated:
            break
    assert contact_seen


def test_contact_cost_helper_shapes():
    model = gym.make("MAML/AntVel-v0").unwrapped.model
    zeros = np.zeros((4, model.nsensordata))
    np.testing.assert_array_equal(contact_cost(zeros, model.nbody), np.zeros(4))


# --- dynamics equal Gymnasium's v5 envs ---------------------------------------------------
@pytest.mark.parametrize(
    ("env_id", "base_id", "base_kwargs"),
    [
        ("MAML/HalfCheetahVel-v0", "HalfCheetah-v5", {}),
        ("MAML/AntDir-v0", "Ant-v5", {"include_cfrc_ext_in_observation": False}),
    ],
)
def test_dynamics_equal_gymnasium(env_id, base_id, base_kwargs):
    ours = gym.make(env_id)
    base = gym.make(base_id, **base_kwargs)
    obs1, _ = ours.reset(seed=5)
    obs2, _ = base.reset(seed=5)
    np.testing.assert_array_equal(obs1, obs2)
    rng = np.random.default_rng(0)
    for _ in range(100):
        action = rng.uniform(-1, 1, ours.action_space.shape)
        obs1, _, term1, _, _ = ours.step(action)
        obs2, _, term2, _, _ = base.step(action)
        np.testing.assert_allclose(obs1, obs2, rtol=1e-12, atol=1e-12)
        assert term1 == term2
        if term1:
            break


# --- batched envs ---------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", ALL_IDS)
def test_vector_env_spaces_and_metadata(env_id):
    venv = make_vec(env_id, 3)
    single = gym.make(env_id)
    unwrapped = venv.unwrapped
    assert isinstance(unwrapped, maml_envs.TaskFamilyVectorEnv)
    assert unwrapped.metadata["autoreset_mode"] is AutoresetMode.DISABLED
    assert unwrapped.max_episode_steps == HORIZON[env_id]
    assert venv.single_observation_space == single.observation_space
    assert venv.single_action_space == single.action_space
    assert venv.observation_space.shape == (3, *single.observation_space.shape)
    assert venv.action_space.shape == (3, *single.action_space.shape)
    obs, _ = venv.reset(seed=0)
    assert obs.dtype == single.observation_space.dtype and obs.shape == (3, obs.shape[1])
    obs, reward, terminated, truncated, _ = venv.step(venv.action_space.sample())
    assert reward.dtype == np.float64 and reward.shape == (3,)
    assert terminated.dtype == bool and truncated.dtype == bool
    assert venv.observation_space.contains(obs)


def _compare_vector_with_singles(env_id, tasks, actions_fn, steps, initial_state=None):
    """Run N singles and the batched env from the same states; return per-env end steps."""
    n = len(tasks)
    venv = make_vec(env_id, n)
    venv.reset(seed=0, options={"tasks": tasks})
    singles = [gym.make(env_id, task=task) for task in tasks]
    first_obs = [env.reset(seed=10 + i)[0] for i, env in enumerate(singles)]
    is_mujoco = env_id in MUJOCO_IDS
    if is_mujoco:
        qpos = np.stack([env.unwrapped.data.qpos for env in singles])
        qvel = np.stack([env.unwrapped.data.qvel for env in singles])
        if initial_state is not None:
            qpos, qvel = initial_state(qpos, qvel)
            for i, env in enumerate(singles):
                env.unwrapped.set_state(qpos[i], qvel[i])
                first_obs[i] = env.unwrapped._get_obs()
        obs = venv.unwrapped.set_state(qpos, qvel)
        np.testing.assert_array_equal(obs, np.stack(first_obs))
    ended = [None] * n
    final_obs = [None] * n
    final_flags = [None] * n
    for t in range(steps):
        actions = actions_fn(t, n)
        obs, rewards, terminated, truncated, info = venv.step(actions)
        for i, env in enumerate(singles):
            if ended[i] is not None:  # finished: frozen observation, zero reward, sticky flags
                np.testing.assert_array_equal(obs[i], final_obs[i])
                assert rewards[i] == 0.0
                assert terminated[i] == final_flags[i][0] and truncated[i] == final_flags[i][1]
                continue
            o, r, te, tr, inf = env.step(actions[i])
            np.testing.assert_array_equal(obs[i], o)
            assert rewards[i] == r, (t, i)
            assert (terminated[i], truncated[i]) == (te, tr), (t, i)
            for key in inf:
                if key.startswith("reward_") or key == "x_velocity":
                    assert info[key][i] == pytest.approx(inf[key], rel=1e-12, abs=1e-12), key
            if te or tr:
                ended[i] = t
                final_obs[i] = o
                final_flags[i] = (te, tr)
    assert np.array_equal(venv.unwrapped.finished, np.array([e is not None for e in ended]))
    return ended


def test_vector_navigation_equals_singles_with_goal_reached():
    tasks = [GoalPosition(0.3, 0.0), GoalPosition(0.05, 0.05), GoalPosition(-0.5, 0.5)]
    ended = _compare_vector_with_singles(
        "MAML/Navigation2D-v0",
        tasks,
        lambda t, n: np.tile([[0.1, 0.0], [0.05, 0.05], [-0.1, 0.1]], (1, 1))[:n],
        110,
    )
    assert ended[:2] == [2, 0]  # goals reached on steps 3 and 1
    assert ended[2] == 4  # reached (-0.5, 0.5) after 5 steps


def test_vector_navigation_truncates_at_horizon():
    venv = make_vec("MAML/Navigation2D-v0", 2)
    venv.reset(seed=0, options={"task": GoalPosition(0.5, 0.5)})
    for _ in range(99):
        _, _, terminated, truncated, _ = venv.step(np.zeros((2, 2)))
        assert not truncated.any()
    obs, _, terminated, truncated, _ = venv.step(np.full((2, 2), 0.1))
    assert truncated.all() and not terminated.any()
    obs2, reward2, _, truncated2, _ = venv.step(np.full((2, 2), 0.1))
    np.testing.assert_array_equal(obs, obs2)
    assert (reward2 == 0).all() and truncated2.all() and venv.unwrapped.finished.all()
    obs3, _ = venv.reset()
    assert not venv.unwrapped.finished.any() and (obs3 == 0).all()
    assert venv.unwrapped.tasks == [GoalPosition(0.5, 0.5)] * 2


@pytest.mark.parametrize("env_id", ["MAML/HalfCheetahVel-v0", "MAML/HalfCheetahDir-v0"])
def test_vector_cheetah_equals_singles(env_id):
    tasks = some_tasks(env_id, 3, seed=4)
    rng = np.random.default_rng(1)
    actions = rng.uniform(-1, 1, (60, 3, 6))
    _compare_vector_with_singles(env_id, tasks, lambda t, n: actions[t], 60)


@pytest.mark.parametrize("env_id", ["MAML/AntVel-v0", "MAML/AntDir-v0", "MAML/AntGoal-v0"])
def test_vector_ant_equals_singles_with_falls(env_id):
    tasks = some_tasks(env_id, 4, seed=5)

    def initial_state(qpos, qvel):
        qpos = qpos.copy()
        qvel = qvel.copy()
        qvel[0, 2] = 6.0  # jumps above the healthy range (z > 1) within a few steps
        qpos[1, 2] = 1.5  # starts above the healthy range: terminates on the first step
        return qpos, qvel

    rng = np.random.default_rng(2)
    actions = rng.uniform(-1, 1, (40, 4, 8))
    ended = _compare_vector_with_singles(env_id, tasks, lambda t, n: actions[t], 40, initial_state)
    assert ended[1] == 0
    assert ended[0] is not None and ended[0] < 20
    assert ended[2] != 0 and ended[3] != 0  # the others run on while 0 and 1 stay finished


def test_vector_initial_state_distribution_and_seeding():
    venv = make_vec("MAML/AntVel-v0", 400)
    obs1, _ = venv.reset(seed=3)
    obs2, _ = venv.reset(seed=3)
    np.testing.assert_array_equal(obs1, obs2)
    qpos, qvel = venv.unwrapped.qpos, venv.unwrapped.qvel
    qpos0 = venv.unwrapped.model.qpos0
    assert np.abs(qpos - qpos0).max() <= 0.1 and np.abs(qpos - qpos0).max() > 0.09
    assert 0.08 < qvel.std() < 0.12 and abs(qvel.mean()) < 0.01
    assert len({tuple(row) for row in obs1}) == 400


def test_vector_task_options_and_sampling():
    venv = make_vec("MAML/AntDir-v0", 4)
    unwrapped = venv.unwrapped
    tasks = unwrapped.sample_tasks(4, np.random.default_rng(0))
    venv.reset(seed=0, options={"tasks": tasks})
    assert unwrapped.tasks == tasks
    venv.reset(options={"task": Direction(-1)})
    assert unwrapped.tasks == [Direction(-1)] * 4
    np.testing.assert_array_equal(unwrapped.task_params, -np.ones((4, 1)))
    with pytest.raises(ValueError, match="not both"):
        venv.reset(options={"task": Direction(1), "tasks": tasks})
    vtask = make_vec("MAML/HalfCheetahVel-v0", 2, task=GoalVelocity(0.25))
    assert vtask.unwrapped.tasks == [GoalVelocity(0.25)] * 2


def test_step_before_reset_raises():
    venv = make_vec("MAML/Navigation2D-v0", 2)
    with pytest.raises(RuntimeError, match="reset"):
        venv.step(np.zeros((2, 2)))


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_single_env_pickles_with_its_constructor_args(env_id):
    task = some_tasks(env_id, 1, seed=9)[0]
    env = gym.make(env_id, task=task).unwrapped
    clone = pickle.loads(pickle.dumps(env))
    assert type(clone) is type(env) and clone.task == task
    assert clone.observation_space == env.observation_space


def test_cheetah_models_compile_without_the_settotalmass_warning(capfd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gym.make("MAML/HalfCheetahVel-v0")
    gym.make_vec("MAML/HalfCheetahDir-v0", num_envs=2, vectorization_mode="vector_entry_point")
    assert "settotalmass" not in capfd.readouterr().err
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()


def test_a_users_own_envs_package_does_not_hide_ours(tmp_path):
    """Many RL projects have a top-level ``envs`` package; ours imports as ``maml_envs``."""
    import subprocess
    import sys

    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "__init__.py").write_text("MINE = True\n")
    code = (
        "import envs, gymnasium as gym; assert envs.MINE\n"
        "from maml_rl.family import TaskFamily\n"
        "from maml_rl.config import TrainConfig\n"
        "env_id = TaskFamily.from_config(TrainConfig()).env_id\n"
        "print(gym.make(env_id).observation_space.shape)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(2,)"
