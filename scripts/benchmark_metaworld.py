"""Env steps per second of Meta-World sampling back-ends, against raw ``mj_step`` physics.

Meta-World's step is Python (reward, observation, mocap), so ``mujoco.batch`` cannot step it.
Measured, in one run so that the ratios share the machine's load:

  (a) ``MAML/MetaWorld-ML1-<task>`` batched env in this process (``num_workers=0``), and
      Gymnasium's ``SyncVectorEnv`` of single envs (the generic fallback);
  (b) the batched env over ``--workers`` worker processes (``num_workers``), Gymnasium's
      ``AsyncVectorEnv`` (one process per sub-env), and ``--workers`` Ray actors each stepping
      an in-process batched env of its share of the sub-envs for all the steps in one call (as
      ``sampler=ray`` samples a shard), waited for once (``--skip-ray`` to skip);
  (c) raw physics: ``mj_step`` x frame_skip on the same model, one env, no Python around it.

    python scripts/benchmark_metaworld.py --task push-v3 --num-envs 20 --steps 100 --workers 2
"""

from __future__ import annotations

import argparse
import itertools
import time

import gymnasium as gym
import mujoco
import numpy as np

import maml_envs  # noqa: F401  (registers the ids)
from maml_envs.meta_world import benchmark_split, make_sawyer


def rate_of(venv: gym.vector.VectorEnv, tasks: list, steps: int, native: bool) -> float:
    """Env steps per second over ``steps`` steps of every sub-env (reset excluded)."""
    n = venv.num_envs
    if native:
        venv.reset(seed=list(range(n)), options={"tasks": tasks})
    else:
        for env, task in zip(venv.unwrapped.envs, tasks):  # SyncVectorEnv
            env.unwrapped.reset_task(task)
        venv.reset(seed=list(range(n)))
    actions = np.random.default_rng(0).uniform(-1, 1, size=(steps, n, 4))
    start = time.perf_counter()
    for t in range(steps):
        venv.step(actions[t])
    return n * steps / (time.perf_counter() - start)


def async_rate(env_id: str, tasks: list, steps: int) -> float:
    def factory(task):
        return lambda: gym.make(env_id, task=task)

    venv = gym.vector.AsyncVectorEnv(
        [factory(t) for t in tasks], autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP
    )
    try:
        venv.reset(seed=list(range(len(tasks))))
        actions = np.random.default_rng(0).uniform(-1, 1, size=(steps, len(tasks), 4))
        start = time.perf_counter()
        for t in range(steps):
            venv.step(actions[t])
        return len(tasks) * steps / (time.perf_counter() - start)
    finally:
        venv.close()


def ray_rate(env_id: str, tasks: list, steps: int, workers: int) -> float:
    """Env steps per second of ``workers`` local Ray actors, each stepping a batched env of a
    contiguous share of ``tasks`` for all ``steps`` in one call (as ``sampler=ray`` samples a
    shard's episodes in one call), from the calls to their results (deadline 600 s)."""
    import ray

    @ray.remote(num_cpus=1)
    class Shard:
        def __init__(self, shard_tasks: list, seeds: list) -> None:
            __import__("maml_envs")  # registers the ids in the actor's process
            self.venv = gym.make_vec(
                env_id, num_envs=len(shard_tasks), vectorization_mode="vector_entry_point"
            )
            self.venv.reset(seed=seeds, options={"tasks": shard_tasks})

        def run(self, actions: np.ndarray) -> int:
            for step_actions in actions:
                self.venv.step(step_actions)
            return actions.shape[0] * actions.shape[1]

    n = len(tasks)
    parts = list(itertools.pairwise(np.linspace(0, n, workers + 1).astype(int)))
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        shards = [Shard.remote(tasks[a:b], list(range(a, b))) for a, b in parts]
        actions = np.random.default_rng(0).uniform(-1, 1, size=(steps + 1, n, 4))
        ray.get([s.run.remote(actions[:1, a:b]) for s, (a, b) in zip(shards, parts)], timeout=600)
        start = time.perf_counter()
        calls = [s.run.remote(actions[1:, a:b]) for s, (a, b) in zip(shards, parts)]
        done = sum(ray.get(calls, timeout=600))
        return done / (time.perf_counter() - start)
    finally:
        ray.shutdown()


def raw_rate(task, steps: int) -> float:
    env = make_sawyer(task.task_name)
    env.set_task(task.to_metaworld())
    env.reset()
    model, data = env.model, env.data
    start = time.perf_counter()
    for _ in range(steps):
        mujoco.mj_step(model, data, nstep=env.frame_skip)
    seconds = time.perf_counter() - start
    env.close()
    return steps / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="push-v3")
    parser.add_argument("--num-envs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-async", action="store_true", help="skip AsyncVectorEnv")
    parser.add_argument("--skip-ray", action="store_true", help="skip the Ray actors")
    args = parser.parse_args()
    env_id = f"MAML/MetaWorld-ML1-{args.task.removesuffix('-v3')}-v0"
    goals = benchmark_split("ML1", args.task, 0)[0][args.task]
    tasks = [goals[i % len(goals)] for i in range(args.num_envs)]
    n, steps = args.num_envs, args.steps
    rates: dict[str, float] = {}

    def native(workers: int) -> float:
        venv = gym.make_vec(
            env_id, num_envs=n, vectorization_mode="vector_entry_point", num_workers=workers
        )
        try:
            return rate_of(venv, tasks, steps, native=True)
        finally:
            venv.close()

    rates["a: batched env, in process"] = native(0)
    sync = gym.make_vec(env_id, num_envs=n, vectorization_mode="sync")
    rates["a: SyncVectorEnv of single envs"] = rate_of(sync, tasks, steps, native=False)
    sync.close()
    rates[f"b: batched env, {args.workers} worker processes"] = native(args.workers)
    if not args.skip_async:
        rates[f"b: AsyncVectorEnv, {n} processes"] = async_rate(env_id, tasks, steps)
    if not args.skip_ray:
        rates[f"b: {args.workers} Ray actors, batched env each"] = ray_rate(
            env_id, tasks, steps, args.workers
        )
    rates["c: raw mj_step x frame_skip, 1 env"] = raw_rate(tasks[0], steps * 10)
    base = rates["a: batched env, in process"]
    print(f"{env_id}: {n} sub-envs x {steps} steps (env steps per second; ratio to a, in process)")
    for name, rate in rates.items():
        print(f"  {name:45s} {rate:9.0f}  {rate / base:5.2f}")


if __name__ == "__main__":
    main()
