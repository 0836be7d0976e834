"""Env steps per second of Meta-World sampling back-ends, against raw ``mj_step`` physics.

Meta-World's step is Python (reward, observation, mocap), so ``mujoco.batch`` cannot step it.
Measured, in one run so that the ratios share the machine's load:

  (a) ``MAML/MetaWorld-ML1-<task>`` batched env in this process (``num_workers=0``), and
      Gymnasium's ``SyncVectorEnv`` of single envs (the generic fallback);
  (b) the batched env over ``--workers`` worker processes (``num_workers``), and Gymnasium's
      ``AsyncVectorEnv`` (one process per sub-env);
  (c) raw physics: ``mj_step`` x frame_skip on the same model, one env, no Python around it.

    python scripts/benchmark_metaworld.py --task push-v3 --num-envs 20 --steps 100 --workers 2
"""

from __future__ import annotations

import argparse
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
    rates["c: raw mj_step x frame_skip, 1 env"] = raw_rate(tasks[0], steps * 10)
    base = rates["a: batched env, in process"]
    print(f"{env_id}: {n} sub-envs x {steps} steps (env steps per second; ratio to a, in process)")
    for name, rate in rates.items():
        print(f"  {name:45s} {rate:9.0f}  {rate / base:5.2f}")


if __name__ == "__main__":
    main()
