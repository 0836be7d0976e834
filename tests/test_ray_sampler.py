"""The Ray sampler returns the local sampler's batches, on one or two (simulated) nodes, through
worker deaths; it fails clearly when it cannot go on. One two-node Ray cluster serves the module."""

import os
import subprocess
import sys
import threading
import time

import gymnasium as gym
import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

import maml_envs  # noqa: E402, F401  (registers the families)
from maml_rl.config import TrainConfig  # noqa: E402
from maml_rl.family import TaskFamily  # noqa: E402
from maml_rl.policy import CategoricalMLPPolicy, GaussianMLPPolicy, replicate  # noqa: E402
from maml_rl.ray_sampler import RaySampler, import_ray, shard_indices  # noqa: E402
from maml_rl.run import resume, train  # noqa: E402
from maml_rl.sampler import VectorSampler  # noqa: E402
from tests.conftest import logged_numbers, progress_rows, tiny_config  # noqa: E402

NAV = "MAML/Navigation2D-v0"
CHEETAH = "MAML/HalfCheetahVel-v0"
CHEETAH_10 = TaskFamily.make(CHEETAH, max_episode_steps=10)


def assert_same_batch(a, b):
    for name, x, y in zip(a._fields, a, b):
        if x is None or y is None:  # no success flags
            assert x is None and y is None, name
            continue
        assert x.shape == y.shape and x.dtype == y.dtype, name
        assert torch.equal(x, y), name


def nav_setup(num_tasks=4):
    """A linear policy steering each task to its goal: episodes end at different steps."""
    policy = GaussianMLPPolicy(2, 2, (), init_std=0.01)
    tasks = gym.make(NAV).unwrapped.sample_tasks(num_tasks, np.random.default_rng(0))
    goals = torch.tensor([[t.x, t.y] for t in tasks], dtype=torch.float32)
    params = {
        "layers.0.weight": -torch.eye(2).expand(num_tasks, 2, 2).clone(),
        "layers.0.bias": goals,
        "log_std": torch.full((num_tasks, 2), -4.0),
    }
    return policy, tasks, params


def cheetah_setup(num_tasks=4):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(17, 6, (16,))
    tasks = gym.make(CHEETAH).unwrapped.sample_tasks(num_tasks, np.random.default_rng(0))
    params = {
        k: v.detach() + 0.01 * torch.randn_like(v)
        for k, v in replicate(policy.params(), num_tasks).items()
    }
    return policy, tasks, params


# -- without a cluster (these run before the module's cluster starts) ----------------------------
def test_without_ray_installed_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    with pytest.raises(ImportError, match=r'pip install -e "\.\[ray\]"'):
        import_ray()
    with pytest.raises(ImportError, match=r"\.\[ray\]"):
        RaySampler(TaskFamily.make(NAV), GaussianMLPPolicy(2, 2, (8,)))


def test_unreachable_cluster_is_a_clear_error():
    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process")
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"cannot reach the cluster at ray_address='127\.0\."):
        RaySampler(TaskFamily.make(NAV), GaussianMLPPolicy(2, 2, (8,)), address="127.0.0.1:9")
    with pytest.raises(RuntimeError, match="not of the form host:port"):
        RaySampler(TaskFamily.make(NAV), GaussianMLPPolicy(2, 2, (8,)), address="nowhere")
    assert time.monotonic() - start < 30
    assert not ray.is_initialized()


class _NotRay:
    """A TCP server on 127.0.0.1 that is not Ray: silent, or answering ``reply`` and closing."""

    def __init__(self, reply: bytes | None) -> None:
        import socket

        self.reply = reply
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.conns: list = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        deadline = time.monotonic() + 60  # bounded even if a test forgets to stop it
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            self.conns.append(conn)
            if self.reply is not None:
                conn.sendall(self.reply)
                conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for conn in self.conns:
            conn.close()
        self.server.close()


@pytest.mark.parametrize("reply", [None, b"HTTP/1.1 400 Bad Request\r\n\r\n"])
def test_an_address_where_something_else_listens_fails_within_the_deadline(monkeypatch, reply):
    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process")

    def init(*args, **kwargs):
        raise AssertionError("ray.init on a server that is not Ray waits for 10+ minutes")

    monkeypatch.setattr(ray, "init", init)
    server = _NotRay(reply)
    try:
        start = time.monotonic()
        with pytest.raises(RuntimeError, match="accepts connections but is not a Ray cluster"):
            RaySampler(
                TaskFamily.make(NAV),
                GaussianMLPPolicy(2, 2, (8,)),
                address=f"127.0.0.1:{server.port}",
                timeout_s=2,
            )
        assert time.monotonic() - start < 10
    finally:
        server.close()


def test_shards_are_contiguous_and_cover_the_tasks():
    assert shard_indices(5, 2) == [[0, 1, 2], [3, 4]]
    assert shard_indices(2, 4) == [[0], [1]]
    assert shard_indices(3, 1) == [[0, 1, 2]]


def test_config_validates_the_sampler_keys():
    from maml_rl.config import ConfigError

    TrainConfig(sampler="ray", num_workers=3, ray_address="auto").validate()
    for bad in ({"sampler": "mpi"}, {"num_workers": 0}, {"ray_max_retries": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            TrainConfig(**bad).validate()


# -- on a two-node cluster -------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes on this machine (a head and a worker node), 3 logical CPUs each."""
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 3, "include_dashboard": False},
    )
    c.add_node(num_cpus=3)
    ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def cheetah_sampler(cluster):
    policy, _, _ = cheetah_setup()
    sampler = RaySampler(CHEETAH_10, policy, num_workers=2)
    yield sampler
    sampler.close()


def test_the_address_check_accepts_a_real_cluster(cluster):
    from maml_rl.ray_sampler import check_reachable

    check_reachable(cluster.address, timeout_s=10)


def test_two_workers_spread_over_two_nodes_equal_the_local_sampler(cluster, cheetah_sampler):
    policy, tasks, params = cheetah_setup()
    local = VectorSampler(CHEETAH_10, policy)
    assert len({loc.node_id for loc in cheetah_sampler.locations}) == 2
    for seed in (0, 1):
        assert_same_batch(
            cheetah_sampler.sample(tasks, params, 3, seed), local.sample(tasks, params, 3, seed)
        )
    # unbatched params (one policy for all tasks) too
    theta = policy.params()
    assert_same_batch(cheetah_sampler.sample(tasks, theta, 2, 7), local.sample(tasks, theta, 2, 7))


@pytest.mark.parametrize("num_workers", [1, 2, 3])
def test_navigation_with_early_ends_equals_the_local_sampler(cluster, num_workers):
    policy, tasks, params = nav_setup(num_tasks=4)
    local = VectorSampler(TaskFamily.make(NAV), policy).sample(tasks, params, 3, seed=5)
    lengths = local.episode_lengths
    assert lengths.max() < 100 and lengths.min() < lengths.max()  # shards end at different steps
    sampler = RaySampler(TaskFamily.make(NAV), policy, num_workers=num_workers)
    try:
        assert_same_batch(sampler.sample(tasks, params, 3, seed=5), local)
    finally:
        sampler.close()


def test_cheetah_one_worker_equals_the_local_sampler(cluster):
    policy, tasks, params = cheetah_setup(num_tasks=3)
    local = VectorSampler(CHEETAH_10, policy).sample(tasks, params, 2, seed=3)
    sampler = RaySampler(CHEETAH_10, policy, num_workers=1)
    try:
        assert_same_batch(sampler.sample(tasks, params, 2, seed=3), local)
    finally:
        sampler.close()


def test_meta_world_with_success_flags_equals_the_local_sampler(cluster):
    """Meta-World ML1 (its presets sample on Ray): two workers, the same batch, success included."""
    pytest.importorskip("metaworld")
    family = TaskFamily.make("MAML/MetaWorld-ML1-reach-v0", max_episode_steps=12)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(39, 4, (8,), nonlinearity="tanh")
    tasks = family.training_tasks(0, 0, 3)
    local = VectorSampler(family, policy).sample(tasks, policy.params(), 2, seed=4)
    assert local.success is not None
    sampler = RaySampler(family, policy, num_workers=2)
    try:
        assert_same_batch(sampler.sample(tasks, policy.params(), 2, seed=4), local)
    finally:
        sampler.close()


@pytest.mark.parametrize("num_workers", [2, 3])
def test_categorical_policy_on_the_tabular_mdp_equals_the_local_sampler(cluster, num_workers):
    """Discrete actions (Gumbel-max from per-task uniforms): the same int64 batches."""
    torch.manual_seed(0)
    family = TaskFamily.make("MAML/TabularMDP-v0")
    policy = CategoricalMLPPolicy(10, 5, (16,))
    tasks = family.sample_tasks(3, np.random.default_rng(0))
    params = {
        k: v.detach() + 0.3 * torch.randn_like(v) for k, v in replicate(policy.params(), 3).items()
    }
    local = VectorSampler(family, policy).sample(tasks, params, 3, seed=4)
    assert local.actions.dtype == torch.int64
    sampler = RaySampler(family, policy, num_workers=num_workers)
    try:
        assert_same_batch(sampler.sample(tasks, params, 3, seed=4), local)
    finally:
        sampler.close()


def test_a_worker_killed_by_ray_during_sampling_is_replaced(cluster, cheetah_sampler):
    policy, tasks, params = cheetah_setup()
    local = VectorSampler(CHEETAH_10, policy).sample(tasks, params, 3, 11)
    victim = cheetah_sampler.workers[0]
    killer = threading.Timer(0.02, lambda: ray.kill(victim, no_restart=False))
    killer.start()
    batch = cheetah_sampler.sample(tasks, params, 3, 11)
    killer.join()
    assert_same_batch(batch, local)
    # whether the kill hit the call or the idle worker, the next call is whole too
    assert_same_batch(cheetah_sampler.sample(tasks, params, 3, 11), local)


def _fault_hook(flags: str):
    """A worker hook: exit the process on shard 0 while ``flags/crash_once`` exists (removing
    it) or ``flags/crash_always`` exists."""

    def hook(shard):
        if shard[0] != 0:
            return
        once = os.path.join(flags, "crash_once")
        if os.path.exists(once):
            os.remove(once)
            os._exit(1)
        if os.path.exists(os.path.join(flags, "crash_always")):
            os._exit(1)

    return hook


def test_worker_deaths_mid_sample_then_past_the_retry_limit(cluster, tmp_path):
    policy, tasks, params = nav_setup(num_tasks=4)
    local = VectorSampler(TaskFamily.make(NAV), policy).sample(tasks, params, 3, seed=2)
    sampler = RaySampler(
        TaskFamily.make(NAV),
        policy,
        num_workers=2,
        max_retries=1,
        worker_hook=_fault_hook(str(tmp_path)),
    )
    try:
        (tmp_path / "crash_once").touch()
        batch = sampler.sample(tasks, params, 3, seed=2)
        assert not (tmp_path / "crash_once").exists()
        assert sampler.retries == 1
        assert_same_batch(batch, local)

        (tmp_path / "crash_always").touch()
        start = time.monotonic()
        with pytest.raises(
            RuntimeError, match=r"worker 0 failed 2 times .*ray_max_retries=1"
        ) as err:
            sampler.sample(tasks, params, 3, seed=2)
        assert time.monotonic() - start < 60
        assert "\n" not in str(err.value)  # one line for the command line
    finally:
        sampler.close()


def _config(**overrides) -> TrainConfig:
    sizes = dict(meta_batch_size=4, episodes_per_task=3, hidden_sizes=[16], num_iterations=2)
    return tiny_config(**{**sizes, **overrides})


def _numbers(run_dir):
    return logged_numbers(progress_rows(run_dir))


def test_training_with_the_ray_sampler_matches_the_local_run(cluster, tmp_path):
    local = train(_config(num_iterations=3), tmp_path / "local", stdout=False)
    distributed = train(_config(sampler="ray", num_workers=2), tmp_path / "ray", stdout=False)
    assert len(_numbers(distributed)) == 2
    assert _numbers(distributed) == _numbers(local)[:2]
    # a run sampled on a cluster may go on locally (and back): the batches are the same
    overrides = {"sampler": "vector", "num_iterations": 3}
    resume(distributed, overrides, stdout=False)
    assert _numbers(distributed) == _numbers(local)


@pytest.mark.slow
def test_local_address_starts_and_stops_its_own_ray(tmp_path):
    """``ray_address=local`` in a fresh process: Ray starts, samples the local batch, stops."""
    script = (
        "import torch, envs\n"
        "from tests.test_ray_sampler import nav_setup, assert_same_batch, NAV\n"
        "from maml_rl.family import TaskFamily\n"
        "from maml_rl.sampler import VectorSampler\n"
        "from maml_rl.ray_sampler import RaySampler\n"
        "import ray\n"
        "policy, tasks, params = nav_setup()\n"
        "s = RaySampler(TaskFamily.make(NAV), policy, num_workers=2, address='local')\n"
        "assert_same_batch(s.sample(tasks, params, 3, 1),"
        " VectorSampler(TaskFamily.make(NAV), policy).sample(tasks, params, 3, 1))\n"
        "s.close()\n"
        "assert not ray.is_initialized()\n"
        "print('ok')\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


def test_evaluation_on_ray_equals_the_local_evaluation(cluster, monkeypatch):
    """``maml-rl evaluate`` samples with the run's back-end: a run configured for Ray adapts
    and is measured on it with the local evaluation's numbers, to the bit."""
    from maml_rl.evaluation import Method, evaluate_method, random_policy, sample_test_tasks
    from maml_rl.report import EvalSettings

    calls = []
    real_sample = RaySampler.sample
    monkeypatch.setattr(
        RaySampler, "sample", lambda self, *a: calls.append(1) or real_sample(self, *a)
    )
    results = []
    for sampler in ("vector", "ray"):
        config = _config(sampler=sampler, num_workers=2)
        tasks = sample_test_tasks(config, 3, seed=0)
        settings = EvalSettings(num_tasks=3, num_steps=2, env_steps=300, eval_episodes=2)
        method = Method("MAML", "maml", "x", config, policy=random_policy(config))
        results.append(evaluate_method(method, tasks, settings))
    local, distributed = results
    assert len(calls) == 2 + 3  # adaptation batches for steps 0 and 1; 3 measured batches
    np.testing.assert_array_equal(local.returns, distributed.returns)
