"""The authors' exact (rllab) locomotion tasks against an independent MuJoCo computation.

The reference below loads Gymnasium's XML files with ``mujoco.MjModel`` (the ant's edits made
by rewriting the XML text, not with ``MjSpec``), steps one ``mj_step`` per action, calls
``mj_forward``, ``mj_subtreeVel`` and ``mj_rnePostConstraint`` itself, and builds observations,
rewards and termination from rllab's formulas (cbfinn/maml_rl ``*_env_rand*.py``).
"""

from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import maml_envs  # noqa: F401  (registers the ids)
from maml_envs import Direction, GoalPosition, GoalVelocity
from maml_envs.mujoco_vector import gymnasium_asset
from tests.conftest import make_vec, some_tasks

CHEETAH_IDS = ["MAML/HalfCheetahVel-rllab-v0", "MAML/HalfCheetahDir-rllab-v0"]
ANT_IDS = ["MAML/AntVel-rllab-v0", "MAML/AntDir-rllab-v0", "MAML/AntGoal-rllab-v0"]
RLLAB_IDS = CHEETAH_IDS + ANT_IDS
ANT_INIT_QPOS = [0.0, 0.0, 0.55, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0, -1.0, 0.0, 1.0]


def reference_model(env_id: str) -> mujoco.MjModel:
    """The rllab model built from Gymnasium's XML by text edits."""
    if "HalfCheetah" in env_id:
        return mujoco.MjModel.from_xml_path(gymnasium_asset("half_cheetah.xml"))
    with open(gymnasium_asset("ant.xml")) as f:
        xml = f.read()
    xml = xml.replace('timestep="0.01"', 'timestep="0.02"')
    xml = xml.replace('ctrlrange="-1.0 1.0"', 'ctrlrange="-150 150"').replace(
        'gear="150"', 'gear="1"'
    )
    rllab_contact = 'solref=".02 1" solimp=".8 .8 .01" '
    xml = xml.replace('<geom conaffinity="0"', f'<geom {rllab_contact}conaffinity="0"', 1)
    xml = xml.replace('<geom conaffinity="1"', f'<geom {rllab_contact}conaffinity="1"')
    model = mujoco.MjModel.from_xml_string(xml)
    model.qpos0[:] = ANT_INIT_QPOS
    return model


class Reference:
    """One rllab env computed step by step with plain MuJoCo calls."""

    def __init__(self, env_id: str, task, qpos: np.ndarray, qvel: np.ndarray):
        self.env_id = env_id
        self.ant = "Ant" in env_id
        self.model = reference_model(env_id)
        self.data = mujoco.MjData(self.model)
        self.task = task
        self.data.qpos[:] = qpos
        self.data.qvel[:] = qvel
        self._forward()

    def _forward(self) -> None:
        mujoco.mj_forward(self.model, self.data)
        mujoco.mj_subtreeVel(self.model, self.data)
        mujoco.mj_rnePostConstraint(self.model, self.data)

    def obs(self) -> np.ndarray:
        d = self.data
        torso = 1
        if not self.ant:
            return np.concatenate([d.qpos[1:], d.qvel, d.subtree_com[torso]])
        return np.concatenate(
            [
                d.qpos,
                d.qvel,
                np.clip(d.cfrc_ext, -1, 1).ravel(),
                d.xmat[torso],
                d.subtree_com[torso],
            ]
        )

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, float]:
        d = self.data
        d.ctrl[:] = action
        mujoco.mj_step(self.model, d)
        self._forward()
        v = d.subtree_linvel[1][0]
        if not self.ant:
            ctrl = 0.05 * np.sum(np.square(action))
            if isinstance(self.task, GoalVelocity):
                reward = -abs(v - self.task.velocity) - ctrl
            else:
                reward = self.task.direction * v - ctrl
            return self.obs(), reward, False, v
        ctrl = 0.005 * np.sum(np.square(action / 150.0))
        contact = 0.0005 * np.sum(np.square(np.clip(d.cfrc_ext, -1, 1)))
        if isinstance(self.task, GoalVelocity):
            task_reward = -abs(v - self.task.velocity) + 1.0
        elif isinstance(self.task, Direction):
            task_reward = self.task.direction * v
        else:
            goal = np.array([self.task.x, self.task.y])
            task_reward = -np.sum(np.abs(d.subtree_com[1][:2] - goal)) + 4.0
        reward = task_reward - ctrl - contact + 0.05
        state = np.concatenate([d.qpos, d.qvel])
        done = not (np.isfinite(state).all() and 0.2 <= d.qpos[2] <= 1.0)
        return self.obs(), reward, done, v


@pytest.mark.parametrize("env_id", RLLAB_IDS)
def test_registered_spaces_and_checker(env_id):
    env = gym.make(env_id)
    assert gym.spec(env_id).max_episode_steps == 200
    assert env.observation_space.shape == ((20,) if env_id in CHEETAH_IDS else (125,))
    bound = 1.0 if env_id in CHEETAH_IDS else 150.0
    np.testing.assert_array_equal(env.action_space.high, np.full(env.action_space.shape, bound))
    check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.parametrize("env_id", RLLAB_IDS)
def test_model_facts(env_id):
    model = gym.make(env_id).unwrapped.model
    reference = reference_model(env_id)
    assert gym.make(env_id).unwrapped.dt == reference.opt.timestep  # frame skip 1
    assert model.opt.timestep == (0.01 if env_id in CHEETAH_IDS else 0.02)
    assert model.opt.integrator == reference.opt.integrator
    np.testing.assert_array_equal(model.actuator_gear, reference.actuator_gear)
    np.testing.assert_array_equal(model.actuator_ctrlrange, reference.actuator_ctrlrange)
    np.testing.assert_array_equal(model.geom_solref, reference.geom_solref)
    np.testing.assert_array_equal(model.geom_solimp, reference.geom_solimp)
    np.testing.assert_array_equal(model.body_mass, reference.body_mass)
    np.testing.assert_array_equal(model.qpos0, reference.qpos0)


@pytest.mark.parametrize("env_id", RLLAB_IDS)
def test_env_equals_independent_mujoco_computation(env_id):
    task = some_tasks(env_id, 1, seed=3)[0]
    env = gym.make(env_id, task=task)
    obs, _ = env.reset(seed=7)
    data = env.unwrapped.data
    reference = Reference(env_id, task, data.qpos.copy(), data.qvel.copy())
    np.testing.assert_allclose(obs, reference.obs(), rtol=0, atol=1e-12)
    rng = np.random.default_rng(0)
    high = env.action_space.high
    steps = 0
    for _ in range(200):
        action = rng.uniform(-high, high)
        obs, reward, terminated, truncated, info = env.step(action)
        ref_obs, ref_reward, ref_done, ref_v = reference.step(action)
        steps += 1
        np.testing.assert_allclose(obs, ref_obs, rtol=1e-10, atol=1e-10)
        assert reward == pytest.approx(ref_reward, rel=1e-10, abs=1e-10)
        assert info["x_velocity"] == pytest.approx(ref_v, rel=1e-10, abs=1e-10)
        assert sum(v for k, v in info.items() if k.startswith("reward_")) == pytest.approx(reward)
        assert terminated == ref_done
        if terminated or truncated:
            break
    assert steps >= 10


def test_reset_noise_is_rllab_gaussian():
    venv = make_vec("MAML/AntVel-rllab-v0", 500)
    venv.reset(seed=0)
    qpos, qvel = venv.unwrapped.qpos, venv.unwrapped.qvel
    noise = qpos - np.array(ANT_INIT_QPOS)
    assert 0.009 < noise.std() < 0.011 and abs(noise.mean()) < 1e-3
    assert np.abs(noise).max() > 0.03  # Gaussian tails, not U(-0.01, 0.01)
    assert 0.09 < qvel.std() < 0.11


def test_com_velocity_is_not_root_joint_velocity():
    env = gym.make("MAML/HalfCheetahVel-rllab-v0")
    env.reset(seed=0)
    x_before = env.unwrapped.data.qpos[0]
    _, _, _, _, info = env.step(np.ones(6))
    root = (env.unwrapped.data.qpos[0] - x_before) / 0.01
    assert abs(info["x_velocity"] - root) > 1e-3


@pytest.mark.parametrize("env_id", RLLAB_IDS)
def test_vector_equals_singles(env_id):
    tasks = some_tasks(env_id, 3, seed=4)
    venv = make_vec(env_id, 3)
    obs, _ = venv.reset(seed=[20, 21, 22], options={"tasks": tasks})
    singles = [gym.make(env_id, task=t) for t in tasks]
    single_obs = [env.reset(seed=20 + i)[0] for i, env in enumerate(singles)]
    np.testing.assert_array_equal(obs, np.stack(single_obs))
    high = venv.single_action_space.high
    rng = np.random.default_rng(1)
    done = [False] * 3
    for _ in range(200):
        actions = rng.uniform(-high, high, (3, high.shape[0]))
        obs, rewards, terminated, truncated, info = venv.step(actions)
        for i, env in enumerate(singles):
            if done[i]:
                assert rewards[i] == 0.0
                continue
            o, r, te, tr, inf = env.step(actions[i])
            np.testing.assert_array_equal(obs[i], o)
            assert rewards[i] == r
            assert (terminated[i], truncated[i]) == (te, tr)
            for key, value in inf.items():
                assert info[key][i] == value, key
            done[i] = te or tr
    assert all(done)


@pytest.mark.parametrize("env_id", [CHEETAH_IDS[0], ANT_IDS[0]])
def test_persistent_and_per_thread_batches_are_bit_identical(env_id, monkeypatch):
    """The batch's ``persistent`` choice (``RllabTask.persistent_batch``) is speed only: with
    the other choice every observation, reward, termination and info value is the same bit for
    bit, over whole episodes on 2 physics threads, with finished sub-envs no longer stepped."""
    from maml_envs import rllab_locomotion

    tasks = some_tasks(env_id, 6, seed=3)

    def run(persistent: bool) -> list:
        family = rllab_locomotion._Ant if "Ant" in env_id else rllab_locomotion._Cheetah
        monkeypatch.setattr(family, "persistent_batch", persistent)
        venv = make_vec(env_id, 6)
        assert venv.unwrapped.batch.persistent is persistent
        out = [venv.reset(seed=list(range(6)), options={"tasks": tasks})[0]]
        high = venv.single_action_space.high
        rng = np.random.default_rng(7)
        for _ in range(200):
            obs, rew, term, trunc, info = venv.step(rng.uniform(-high, high, (6, high.size)))
            out += [obs, rew, term, trunc, *info.values()]
        return out

    for a, b in zip(run(True), run(False), strict=True):
        np.testing.assert_array_equal(a, b)


def test_ant_termination_when_torso_leaves_healthy_range():
    venv = make_vec("MAML/AntDir-rllab-v0", 2)
    venv.reset(seed=0)
    qpos, qvel = venv.unwrapped.qpos, venv.unwrapped.qvel
    qpos[0, 2] = 1.2  # above the healthy range
    venv.unwrapped.set_state(qpos, qvel)
    _, _, terminated, _, _ = venv.step(np.zeros((2, 8)))
    assert terminated.tolist() == [True, False]


@pytest.mark.parametrize("env_id", RLLAB_IDS)
def test_seeded_runs_are_equal(env_id):
    def run():
        venv = make_vec(env_id, 4)
        venv.reset(seed=5, options={"tasks": some_tasks(env_id, 4, seed=1)})
        rng = np.random.default_rng(2)
        high = venv.single_action_space.high
        out = [venv.step(rng.uniform(-high, high, (4, high.shape[0])))[:2] for _ in range(30)]
        return np.stack([o for o, _ in out]), np.stack([r for _, r in out])

    (obs1, rew1), (obs2, rew2) = run(), run()
    np.testing.assert_array_equal(obs1, obs2)
    np.testing.assert_array_equal(rew1, rew2)


def test_task_types():
    assert isinstance(some_tasks("MAML/AntGoal-rllab-v0", 1)[0], GoalPosition)
    assert isinstance(some_tasks("MAML/HalfCheetahDir-rllab-v0", 1)[0], Direction)
    with pytest.raises(ValueError):
        gym.make("MAML/HalfCheetahVel-rllab-v0", task=GoalVelocity(3.0))
