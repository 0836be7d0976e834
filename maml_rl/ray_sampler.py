"""Distributed sampling on a Ray cluster: the meta-batch's tasks split over worker actors.

Each worker is a Ray actor owning a :class:`~maml_rl.sampler.VectorSampler`. Per call the driver
puts the whole meta-batch (tasks, per-task policy parameters as numpy arrays, per-task seeds)
into the object store once and sends every worker the indices of its contiguous shard of tasks;
a worker samples its shard with :meth:`VectorSampler.sample_shard` and returns numpy arrays,
which the driver pads to the longest shard's horizon and concatenates along the task axis.
Because task m's episodes depend on ``task_seeds(seed, M)[m]`` alone, the result equals
``VectorSampler.sample`` for the same seed, bit for bit, with any number of workers.

Faults: a worker that dies (or answers nothing within ``timeout_s``) during a call is replaced
by a fresh actor and its shard sampled again with the same seeds, so no episode is lost or
duplicated. A shard that fails more than ``max_retries`` times in one call, a cluster that
cannot be reached (or is not Ray: a deadline-bound check runs before ``ray.init``) and workers
that cannot start raise :class:`RaySamplerError` (a ``RuntimeError``) naming the cause in one
line.

Ray is an optional dependency: ``pip install -e ".[ray]"``.
"""

from __future__ import annotations

import copy
import importlib
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from maml_rl.batch import EpisodeBatch
from maml_rl.errors import RunFailure
from maml_rl.family import TaskFamily
from maml_rl.policy import MLPPolicy, Params
from maml_rl.sampler import ShardArrays, VectorSampler, assemble, shard_arrays
from maml_rl.seeding import task_seeds

INSTALL_HINT = 'sampler=ray needs Ray: pip install -e ".[ray]" (or pip install "ray>=2.9")'


def import_ray() -> Any:
    """The ``ray`` module, or an ``ImportError`` that says how to install it."""
    try:
        return importlib.import_module("ray")
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err


def shard_indices(num_tasks: int, num_workers: int) -> list[list[int]]:
    """Contiguous, non-empty shards of ``range(num_tasks)``, sizes differing by at most one."""
    parts = np.array_split(np.arange(num_tasks), min(num_workers, num_tasks))
    return [[int(i) for i in part] for part in parts]


class RaySamplerError(RunFailure):
    """The cluster cannot be reached, workers cannot start, or shards failed past the retries."""


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(err).__name__


class WorkerLocation(NamedTuple):
    """The Ray node, host name and process id of a worker."""

    node_id: str
    host: str
    pid: int


_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_SETTINGS_FRAME = 4


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Raise ``ConnectionError`` unless a Ray cluster (a gRPC server) answers at
    ``[ray://]host:port`` within ``timeout_s`` seconds.

    Opens a TCP connection, sends the HTTP/2 client preface and waits for the server's SETTINGS
    frame, which every gRPC server (Ray's GCS and client server) sends at once. ``ray.init``
    itself, given a port where something else listens, waits for more than 10 minutes and
    ignores SIGTERM and Ctrl-C; this check has a deadline.
    """
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConnectionError(f"{address!r} is not of the form host:port")
    deadline = time.monotonic() + timeout_s
    try:
        conn = socket.create_connection((host, int(port)), timeout=timeout_s)
    except OSError as err:
        raise ConnectionError(f"nothing answers at {host}:{port} ({err})") from err
    try:
        conn.sendall(_HTTP2_PREFACE)
        reply = b""
        while len(reply) < 9:
            conn.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = conn.recv(9 - len(reply))
            if not chunk:
                break
            reply += chunk
    except OSError:  # timeout or reset
        reply = b""
    finally:
        conn.close()
    if len(reply) < 9 or reply[3] != _SETTINGS_FRAME:
        raise ConnectionError(
            f"{host}:{port} accepts connections but is not a Ray cluster (no gRPC answer within "
            f"{timeout_s:g} s); use the address `ray start --head` printed"
        )


class SamplerWorker:
    """The actor body: imports the family's modules, builds a VectorSampler, samples shards.

    ``hook``, if given, is called with the shard indices at the start of every
    :meth:`sample_shard` call (tests use it to make a worker die mid-sample).
    """

    def __init__(
        self,
        family: TaskFamily,
        policy: MLPPolicy,
        num_threads: int | None,
        hook: Callable[[list[int]], None] | None = None,
    ) -> None:
        family.import_modules()
        self.sampler = VectorSampler(family, policy, num_threads)
        self.hook = hook

    def ready(self) -> WorkerLocation:
        """Where this worker runs; answering at all means it is built."""
        node_id = importlib.import_module("ray").get_runtime_context().get_node_id()
        return WorkerLocation(node_id, socket.gethostname(), os.getpid())

    def sample_shard(
        self,
        meta_batch: tuple[list[Any], dict[str, np.ndarray], list[int]],
        episodes_per_task: int,
        shard: list[int],
    ) -> ShardArrays:
        if self.hook is not None:
            self.hook(shard)
        tasks, params, seeds = meta_batch
        torch_params = {name: torch.tensor(value) for name, value in params.items()}
        batch = self.sampler.sample_shard(tasks, torch_params, episodes_per_task, seeds, shard)
        return shard_arrays(batch)

    def close(self) -> None:
        self.sampler.close()


class RaySampler:
    """A :class:`~maml_rl.sampler.Sampler` whose M tasks are sampled by ``num_workers`` Ray actors.

    Args:
        family: the resolved task family (workers import its :attr:`~TaskFamily.imports`).
        policy: the policy architecture (a CPU copy is shipped to every worker).
        num_threads: physics threads of each worker's batched env, and the CPUs each worker
            reserves on its node (None: 1).
        num_workers: worker actors, >= 1; a call with M tasks uses ``min(M, num_workers)``.
        address: ``"local"`` starts a Ray instance in this process (stopped by :meth:`close`);
            ``"auto"`` or ``host:port`` / ``ray://host:port`` joins a running cluster. A Ray
            already initialised in this process is used as it is.
        max_retries: times one shard may be re-sampled in one call after its worker died.
        timeout_s: seconds to wait for a shard (and for the workers to start) before the worker
            is treated as dead.
        worker_hook: called on the worker with the shard indices before each shard (tests).
    """

    def __init__(
        self,
        family: TaskFamily,
        policy: MLPPolicy,
        num_threads: int | None = None,
        *,
        num_workers: int = 2,
        address: str = "local",
        max_retries: int = 3,
        timeout_s: float = 600.0,
        worker_hook: Callable[[list[int]], None] | None = None,
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.ray = import_ray()
        self.num_workers = int(num_workers)
        self.max_retries = int(max_retries)
        self.timeout_s = float(timeout_s)
        self.threads_per_worker = int(num_threads or 1)
        self.retries = 0  # shards re-sampled after a worker failure, over the sampler's life
        self._owns_ray = self._connect(address)
        self._worker_args = (
            family,
            copy.deepcopy(policy).to("cpu"),
            self.threads_per_worker,
            worker_hook,
        )
        self._actor_class = self.ray.remote(SamplerWorker).options(
            num_cpus=self.threads_per_worker,
            max_restarts=self.max_retries,  # a worker dying between calls comes back by itself
            max_task_retries=0,  # a call that died is re-sent by the driver, with its shard
            scheduling_strategy="SPREAD",  # over as many nodes as possible
        )
        self.workers: list[Any] = []
        try:
            self.workers = [self._new_worker() for _ in range(self.num_workers)]
            self.locations = self._wait_ready()
        except BaseException:
            self.close()
            raise

    # -- cluster and workers -----------------------------------------------------------------
    def _connect(self, address: str) -> bool:
        """Initialise Ray for ``address``; True when this sampler started Ray itself."""
        ray = self.ray
        if ray.is_initialized():
            return False
        quiet = {"include_dashboard": False, "logging_level": logging.WARNING}
        try:
            if address not in ("local", "auto"):
                # ray.init waits for minutes, deaf to signals, on an address that is not Ray's
                check_reachable(address, min(10.0, self.timeout_s))
            if address == "local":
                cpus = max(os.cpu_count() or 1, self.num_workers * self.threads_per_worker)
                ray.init(address="local", num_cpus=cpus, log_to_driver=False, **quiet)
            else:
                ray.init(address=address, **quiet)
        except Exception as err:
            if ray.is_initialized():
                ray.shutdown()
            where = "start a local Ray instance" if address == "local" else "reach the cluster"
            raise RaySamplerError(
                f"Ray sampler: cannot {where} at ray_address={address!r}: "
                f"{type(err).__name__}: {_first_line(err).rstrip('.')}. Start a cluster with "
                "`ray start --head` and use ray_address=auto (or its address), or "
                "ray_address=local for this machine only."
            ) from err
        return True

    def _new_worker(self) -> Any:
        return self._actor_class.remote(*self._worker_args)

    def _wait_ready(self) -> list[WorkerLocation]:
        ray = self.ray
        refs = [w.ready.remote() for w in self.workers]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.timeout_s)
        if len(ready) < len(refs):
            cpus = ray.cluster_resources().get("CPU", 0)
            raise RaySamplerError(
                f"Ray sampler: only {len(ready)} of {len(refs)} workers started within "
                f"{self.timeout_s:.0f} s; each reserves {self.threads_per_worker} CPU(s) and the "
                f"cluster has {cpus:g}: lower num_workers or num_threads, or add nodes"
            )
        try:
            return ray.get(refs)
        except ray.exceptions.RayError as err:
            raise RaySamplerError(
                f"Ray sampler: a worker failed to start: {_first_line(err)}"
            ) from err

    def _replace_worker(self, index: int) -> None:
        try:
            self.ray.kill(self.workers[index], no_restart=True)
        except Exception:  # already gone
            pass
        self.workers[index] = self._new_worker()

    # -- sampling ----------------------------------------------------------------------------
    def sample(
        self, tasks: Sequence[Any], params: Params, episodes_per_task: int, seed: int
    ) -> EpisodeBatch:
        """Same contract and same result as :meth:`VectorSampler.sample`."""
        ray = self.ray
        tasks = list(tasks)
        if not tasks or episodes_per_task <= 0:
            raise ValueError(
                f"need at least one task and one episode, got {len(tasks)} and {episodes_per_task}"
            )
        numpy_params = {
            name: p.detach().to("cpu", torch.float32).numpy() for name, p in params.items()
        }
        meta_batch = ray.put((tasks, numpy_params, task_seeds(seed, len(tasks))))
        shards = shard_indices(len(tasks), self.num_workers)
        results: list[ShardArrays | None] = [None] * len(shards)
        failures = [0] * len(shards)
        pending: dict[Any, tuple[int, float]] = {}  # ref -> (shard = worker index, deadline)

        def submit(i: int) -> None:
            ref = self.workers[i].sample_shard.remote(meta_batch, episodes_per_task, shards[i])
            pending[ref] = (i, time.monotonic() + self.timeout_s)

        def failed(i: int, cause: str) -> None:
            failures[i] += 1
            if failures[i] > self.max_retries:
                raise RaySamplerError(
                    f"Ray sampler: worker {i} failed {failures[i]} times sampling tasks "
                    f"{shards[i][0]}..{shards[i][-1]} (ray_max_retries={self.max_retries}); "
                    f"last cause: {cause.splitlines()[0]}"
                )
            logging.getLogger(__name__).warning(
                "Ray sampler: worker %d failed (%s); re-sampling its tasks on a new worker",
                i,
                cause.splitlines()[0],
            )
            self.retries += 1
            self._replace_worker(i)
            submit(i)

        for i in range(len(shards)):
            submit(i)
        while pending:
            wait = max(0.0, min(deadline for _, deadline in pending.values()) - time.monotonic())
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=wait)
            if not ready:
                now = time.monotonic()
                for ref, (i, deadline) in list(pending.items()):
                    if deadline <= now:
                        del pending[ref]
                        failed(i, f"no result within timeout_s={self.timeout_s:g} s")
                continue
            ref = ready[0]
            i, _ = pending.pop(ref)
            try:
                results[i] = ray.get(ref)
            except ray.exceptions.RayActorError as err:  # died, or unreachable: retry
                failed(i, f"{type(err).__name__}: {err}")
            except ray.exceptions.RayTaskError as err:  # an error in the sampling code itself
                raise RaySamplerError(
                    f"Ray sampler: worker {i} raised while sampling tasks {shards[i]}: "
                    f"{_first_line(err)}"
                ) from err
        return assemble(results)

    def close(self) -> None:
        """Stop the workers, and Ray itself when this sampler started it."""
        for worker in self.workers:
            try:
                self.ray.kill(worker, no_restart=True)
            except Exception:
                pass
        self.workers = []
        if self._owns_ray and self.ray.is_initialized():
            self.ray.shutdown()
        self._owns_ray = False
