import gymnasium as gym
import numpy as np
import pytest
import torch

import maml_envs  # noqa: F401  (registers the families)
from maml_rl.family import TaskFamily
from maml_rl.policy import GaussianMLPPolicy, replicate
from maml_rl.sampler import VectorSampler
from tests.conftest import assert_shards_make_the_whole_batch

NAV = "MAML/Navigation2D-v0"


def _setup(num_tasks=3, seed=0):
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(2, 2, (16,), init_std=0.05)
    sampler = VectorSampler(TaskFamily.make(NAV), policy)
    tasks = gym.make(NAV).unwrapped.sample_tasks(num_tasks, np.random.default_rng(seed))
    return policy, sampler, tasks


def test_batch_layout_mask_and_returns():
    policy, sampler, tasks = _setup()
    batch = sampler.sample(tasks, policy.params(), episodes_per_task=4, seed=3)
    steps = batch.mask.shape[0]
    assert batch.observations.shape == (steps, 3, 4, 2)
    assert batch.actions.shape == (steps, 3, 4, 2)
    assert batch.rewards.shape == batch.mask.shape == (steps, 3, 4)
    assert steps <= 100
    # valid steps are a prefix; padded steps carry no reward
    diffs = batch.mask[1:] - batch.mask[:-1]
    assert (diffs <= 0).all()
    assert (batch.rewards[batch.mask == 0] == 0).all()
    torch.testing.assert_close(batch.episode_returns, batch.rewards.sum(0))
    torch.testing.assert_close(batch.episode_lengths, batch.mask.sum(0).long())


def test_same_seed_same_batch_and_different_seed_differs():
    policy, sampler, tasks = _setup()
    a = sampler.sample(tasks, policy.params(), 4, seed=11)
    b = sampler.sample(tasks, policy.params(), 4, seed=11)
    c = sampler.sample(tasks, policy.params(), 4, seed=12)
    assert a.success is None and b.success is None  # the family reports no success
    for x, y in zip(a[:-1], b[:-1]):
        assert torch.equal(x, y)
    assert not torch.equal(a.actions[:5], c.actions[:5])


def test_episodes_replay_in_single_envs_with_their_task():
    """Sub-env m*K + k runs episode k of task m: replaying its actions in a single env with
    that task gives the same observations and rewards."""
    policy, sampler, tasks = _setup(num_tasks=3)
    batch = sampler.sample(tasks, policy.params(), episodes_per_task=2, seed=5)
    for m, task in enumerate(tasks):
        for k in range(2):
            env = gym.make(NAV, task=task)
            obs, _ = env.reset(seed=0)
            length = int(batch.episode_lengths[m, k])
            for t in range(length):
                np.testing.assert_allclose(batch.observations[t, m, k].numpy(), obs, atol=1e-6)
                action = np.clip(batch.actions[t, m, k].numpy(), -0.1, 0.1)
                obs, reward, terminated, truncated, _ = env.step(action)
                assert batch.rewards[t, m, k].item() == pytest.approx(reward, abs=1e-5)
                assert (terminated or truncated) == (t == length - 1)


def test_per_task_parameters_drive_each_task():
    policy, sampler, tasks = _setup(num_tasks=2)
    params = {k: v.detach().clone() for k, v in replicate(policy.params(), 2).items()}
    last = len(policy.layers) - 1
    params[f"layers.{last}.bias"][0] = torch.tensor([5.0, 5.0])
    params[f"layers.{last}.bias"][1] = torch.tensor([-5.0, -5.0])
    batch = sampler.sample(tasks, params, 3, seed=0)
    assert (batch.actions[0, 0] > 4).all() and (batch.actions[0, 1] < -4).all()
    with pytest.raises(ValueError, match="task sets"):
        sampler.sample(tasks + tasks, params, 3, seed=0)


def test_unknown_env_id_is_named():
    with pytest.raises(ValueError, match="unknown env id 'MAML/Nope-v0'"):
        TaskFamily.make("MAML/Nope-v0")


CHEETAH = "MAML/HalfCheetahVel-v0"


def test_list_seed_gives_each_sub_env_the_single_env_initial_state():
    venv = gym.make_vec(CHEETAH, num_envs=3, vectorization_mode="vector_entry_point", num_threads=1)
    obs, _ = venv.reset(seed=[7, 8, 9])
    for i, s in enumerate([7, 8, 9]):
        single, _ = gym.make(CHEETAH).reset(seed=s)
        np.testing.assert_array_equal(obs[i], single)
    with pytest.raises(ValueError, match="2 seeds for 3"):
        venv.reset(seed=[1, 2])


def test_batch_split_over_task_shards_equals_the_whole_batch():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(17, 6, (16,))
    sampler = VectorSampler(TaskFamily.make(CHEETAH, max_episode_steps=8), policy, num_threads=1)
    tasks = gym.make(CHEETAH).unwrapped.sample_tasks(4, np.random.default_rng(0))
    params = {
        k: v.detach() + 0.01 * torch.randn_like(v) for k, v in replicate(policy.params(), 4).items()
    }
    assert_shards_make_the_whole_batch(sampler, tasks, params)


def test_normalized_actions_map_onto_the_action_bounds():
    """rllab's normalize: u in [-1, 1] -> low + (clip(u) + 1) (high - low) / 2; for navigation
    the velocity is 0.1 * clip(u, -1, 1)."""
    policy, _, tasks = _setup(num_tasks=2)
    sampler = VectorSampler(TaskFamily.make(NAV, normalize_actions=True), policy)
    batch = sampler.sample(tasks, policy.params(), episodes_per_task=2, seed=5)
    for m, task in enumerate(tasks):
        env = gym.make(NAV, task=task)
        obs, _ = env.reset(seed=0)
        for t in range(int(batch.episode_lengths[m, 0])):
            np.testing.assert_allclose(batch.observations[t, m, 0].numpy(), obs, atol=1e-6)
            velocity = 0.1 * np.clip(batch.actions[t, m, 0].numpy(), -1.0, 1.0)
            obs, reward, *_ = env.step(velocity)
            assert batch.rewards[t, m, 0].item() == pytest.approx(reward, abs=1e-5)


def test_normalized_actions_need_a_bounded_action_space():
    policy = GaussianMLPPolicy(3, 1, (4,))
    gym.register(
        "MAMLTest/UnboundedPendulum-v0", entry_point=_unbounded_pendulum, max_episode_steps=5
    )
    try:
        family = TaskFamily.make("MAMLTest/UnboundedPendulum-v0", normalize_actions=True)
        sampler = VectorSampler(family, policy)
        with pytest.raises(ValueError, match="bounded action space"):
            sampler.sample([None], policy.params(), 2, seed=0)
    finally:
        gym.registry.pop("MAMLTest/UnboundedPendulum-v0")


def _unbounded_pendulum():
    env = gym.make("Pendulum-v1").unwrapped
    env.action_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    env.reset_task = lambda task: None
    env.sample_tasks = lambda n, rng: [None] * n
    return env


def test_unnormalize_is_exact_clipping_for_unit_bounds():
    from maml_rl.family import unnormalize_actions

    u = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    ones = np.ones(6, dtype=np.float32)
    assert np.array_equal(unnormalize_actions(u, -ones, ones), np.clip(u, -1, 1))
    np.testing.assert_allclose(
        unnormalize_actions(u, -0.1 * ones, 0.1 * ones),
        0.1 * np.clip(u, -1, 1),
        rtol=1e-6,
        atol=1e-7,
    )


def test_forwards_run_single_threaded_and_the_callers_threads_never_change(monkeypatch):
    """The policy forward of every step runs with one torch thread, without autograd, on the
    rollout thread; the sampling caller's torch thread count is never touched."""
    policy, sampler, tasks = _setup()
    sampler.sample(tasks, policy.params(), episodes_per_task=1, seed=0)  # the thread exists
    seen = []
    forward = policy.forward

    def probe(*args, **kwargs):
        seen.append((torch.get_num_threads(), torch.is_grad_enabled()))
        return forward(*args, **kwargs)

    monkeypatch.setattr(policy, "forward", probe)
    set_calls = []
    real_set = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: set_calls.append(n) or real_set(n))
    before = torch.get_num_threads()
    real_set(2)
    try:
        sampler.sample(tasks, policy.params(), episodes_per_task=2, seed=1)
        assert torch.get_num_threads() == 2  # the caller's count, as it set it
    finally:
        real_set(before)
    assert seen and set(seen) == {(1, False)}
    assert set_calls == []  # the rollout thread set its own count once, when it started


def test_starting_the_rollout_thread_changes_no_other_threads_count():
    import subprocess
    import sys

    code = (
        "import threading, torch\n"
        "from maml_rl.rollout_thread import on_rollout_thread\n"
        "torch.set_num_threads(2)\n"
        "worker = on_rollout_thread(lambda progress: torch.get_num_threads())\n"
        "later = []\n"
        "t = threading.Thread(target=lambda: later.append(torch.get_num_threads()))\n"
        "t.start(); t.join()\n"
        "print(worker, torch.get_num_threads(), later[0])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1", "2", "2"]  # rollout thread, caller, a thread made later


def test_a_forward_that_raises_reaches_the_caller(monkeypatch):
    policy, sampler, tasks = _setup()

    def broken(*args, **kwargs):
        raise RuntimeError("forward failed")

    monkeypatch.setattr(policy, "forward", broken)
    with pytest.raises(RuntimeError, match="forward failed"):
        sampler.sample(tasks, policy.params(), episodes_per_task=2, seed=1)


def test_a_family_with_a_sub_env_limit_is_sampled_in_parts_with_the_same_batch():
    """A family whose env declares metadata["max_sub_envs"] (Meta-World: 100) never gets a
    batched env above it; the batch assembled from the parts equals the one-call batch."""
    import dataclasses

    from maml_rl.sampler import task_parts

    assert task_parts(range(4), 4, None) == [[0, 1, 2, 3]]
    assert task_parts(range(4), 4, 16) == [[0, 1, 2, 3]]
    assert task_parts(range(5), 4, 9) == [[0, 1], [2, 3], [4]]
    assert task_parts(range(50), 3, 100) == [list(range(25)), list(range(25, 50))]
    assert task_parts([3, 4, 5], 10, 4) == [[3], [4], [5]]  # one task per part at least
    policy, whole, tasks = _setup(num_tasks=5)
    family = whole.family
    limited = dataclasses.replace(
        family, description=dataclasses.replace(family.description, max_sub_envs=9)
    )
    assert limited.max_sub_envs == 9 and family.max_sub_envs is None
    parts = VectorSampler(limited, policy)
    params = {k: v + 0.01 * torch.randn_like(v) for k, v in replicate(policy.params(), 5).items()}
    a = whole.sample(tasks, params, episodes_per_task=4, seed=7)
    b = parts.sample(tasks, params, episodes_per_task=4, seed=7)
    for name, x, y in zip(a._fields, a, b):
        assert (x is None and y is None) or torch.equal(x, y), name
    assert max(parts._envs) <= 9 and sorted(parts._envs) == [4, 8]
    assert_shards_make_the_whole_batch(parts, tasks, params)  # shards (Ray's path) split too
    whole.close()
    parts.close()


@pytest.mark.parametrize("value", ["100", 0, -3, 2.5, True])
def test_a_bad_sub_env_limit_is_one_clear_line(value):
    from maml_envs.navigation import Navigation2DEnv
    from maml_rl.errors import UserEnvError

    class Limited(Navigation2DEnv):
        metadata = {**Navigation2DEnv.metadata, "max_sub_envs": value}  # noqa: RUF012

    name = f"MAMLTest/LimitedNavigation-{abs(hash(repr(value)))}-v0"
    gym.register(name, entry_point=Limited, max_episode_steps=5)
    try:
        with pytest.raises(UserEnvError, match=r"metadata\['max_sub_envs'\] must be a positive"):
            TaskFamily.make(name)
    finally:
        gym.registry.pop(name, None)


def test_a_rollout_step_that_hangs_ends_the_wait_at_the_deadline_and_cancels_it(monkeypatch):
    """The deadline is on each step: a rollout whose steps each end within it runs as long as
    it needs; one step longer than the deadline (also under twice it) ends the caller's wait,
    and its next tick cancels the rollout; a rollout queued behind it runs after it."""
    import time

    import maml_rl.rollout_thread as rollout_thread

    monkeypatch.setattr(rollout_thread, "STEP_DEADLINE_S", 0.3)

    def steps_of(*seconds, ended=None):
        def work(progress):
            for s in seconds:
                progress.tick()
                time.sleep(s)
            try:
                progress.tick()
            except rollout_thread.RolloutCancelled:
                ended.append("cancelled")
                raise
            return "done"

        return work

    assert rollout_thread.on_rollout_thread(steps_of(*[0.2] * 5)) == "done"  # 1 s in all
    ended = []
    start = time.perf_counter()
    with pytest.raises(TimeoutError, match="rollout step took over"):
        rollout_thread.on_rollout_thread(steps_of(0.1, 0.45, ended=ended))  # 1.5x the deadline
    assert 0.35 < time.perf_counter() - start < 0.5
    monkeypatch.setattr(rollout_thread, "STEP_DEADLINE_S", 5.0)
    assert rollout_thread.on_rollout_thread(lambda progress: "next") == "next"  # after it
    assert ended == ["cancelled"]


def test_an_interrupted_caller_waits_for_its_rollout_to_stop(monkeypatch):
    """Ctrl-C (or SIGTERM, which the CLI turns into KeyboardInterrupt) while a rollout runs: the
    rollout is cancelled at its next step, and the caller returns only once it has stopped, so
    that the env is no longer stepped when the caller closes it."""
    import os
    import signal
    import threading
    import time

    import maml_rl.rollout_thread as rollout_thread

    state = []

    def long_rollout(progress):
        try:
            for _ in range(100):
                progress.tick()
                time.sleep(0.05)
        except rollout_thread.RolloutCancelled:
            time.sleep(0.1)  # finishing its step
            state.append("stopped")
            raise

    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        rollout_thread.on_rollout_thread(long_rollout)
    assert state == ["stopped"]


def test_a_timeout_error_raised_inside_a_rollout_reaches_the_caller_at_once():
    """An env's own TimeoutError (futures' timeout is the same class) is the rollout's error,
    not a missed deadline: it reaches the caller as raised, without waiting for the deadline."""
    import time

    import maml_rl.rollout_thread as rollout_thread

    def times_out(progress):
        progress.tick()
        raise TimeoutError("the env's own timeout")

    start = time.perf_counter()
    with pytest.raises(TimeoutError, match="the env's own timeout"):
        rollout_thread.on_rollout_thread(times_out)
    assert time.perf_counter() - start < 1.0
