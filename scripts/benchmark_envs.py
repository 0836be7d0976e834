"""Env-steps per second of the batched MuJoCo task envs against their baselines.

For ``--env`` (default ``MAML/HalfCheetahVel-v0``) with N sub-envs (default 800 = 40 tasks x 20
episodes) it times (a) a Python loop over N Gymnasium envs of the underlying v5 model
(``HalfCheetah-v5`` / ``Ant-v5``; also over their ``.unwrapped`` envs), (b) the batched env
from ``gymnasium.make_vec``, and (c) raw ``mujoco.rollout`` physics with the same N, frame
skip and thread count (the physical limit), then prints the ratios b/a and b/c and a JSON line.

    python scripts/benchmark_envs.py --num-envs 800 --steps 100 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import time

import gymnasium as gym
import mujoco
import numpy as np
from mujoco import rollout

import maml_envs  # noqa: F401  (registers the MAML/ ids)

BASE_ENV = {"HalfCheetah": "HalfCheetah-v5", "Ant": "Ant-v5"}


def base_env_id(env_id: str) -> str:
    for prefix, base in BASE_ENV.items():
        if env_id.startswith(f"MAML/{prefix}"):
            return base
    raise ValueError(f"no Gymnasium baseline for {env_id}")


def time_python_loop(
    env_id: str, num_envs: int, steps: int, rng: np.random.Generator, unwrapped: bool = False
) -> float:
    """(a) steps/s of a Python loop over ``num_envs`` envs from ``gymnasium.make`` (with its
    default wrappers, as a sampler uses them), or over their ``.unwrapped`` envs."""
    kwargs = {"include_cfrc_ext_in_observation": False} if env_id == "Ant-v5" else {}
    envs_ = [gym.make(env_id, **kwargs) for _ in range(num_envs)]
    if unwrapped:
        envs_ = [env.unwrapped for env in envs_]
    for i, env in enumerate(envs_):
        env.reset(seed=i)
    nu = envs_[0].action_space.shape[0]
    actions = rng.uniform(-1, 1, (steps, num_envs, nu))
    start = time.perf_counter()
    for t in range(steps):
        for i, env in enumerate(envs_):
            env.step(actions[t, i])
    return num_envs * steps / (time.perf_counter() - start)


def time_batched(
    env_id: str, num_envs: int, steps: int, threads: int, rng: np.random.Generator
) -> tuple[float, mujoco.MjModel, int]:
    """(b) steps/s of the batched env (horizon lifted so that no sub-env finishes)."""
    venv = gym.make_vec(
        env_id,
        num_envs=num_envs,
        vectorization_mode="vector_entry_point",
        num_threads=threads,
        max_episode_steps=None,
    )
    if "Ant" in env_id:  # keep every ant running: termination would skip physics
        venv.unwrapped._terminated_now = lambda: np.zeros(num_envs, dtype=bool)
    venv.reset(seed=0)
    actions = rng.uniform(-1, 1, (steps, *venv.action_space.shape))
    start = time.perf_counter()
    for t in range(steps):
        venv.step(actions[t])
    rate = num_envs * steps / (time.perf_counter() - start)
    return rate, venv.unwrapped.model, venv.unwrapped.frame_skip


def time_raw_rollout(
    model: mujoco.MjModel,
    num_envs: int,
    steps: int,
    frame_skip: int,
    threads: int,
    actions: np.ndarray,
) -> float:
    """(c) steps/s of ``mujoco.rollout`` alone, chained step by step like an env, with the
    controls ``actions`` ``[steps, num_envs, nu]`` held for each step's frame skip."""
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    data = mujoco.MjData(model)
    state0 = np.empty(mujoco.mj_stateSize(model, spec))
    mujoco.mj_getState(model, data, state0, spec)
    state = np.tile(state0, (num_envs, 1))
    out = np.empty((num_envs, frame_skip, state.shape[1]))
    sensordata = np.empty((num_envs, frame_skip, model.nsensordata))
    ctrl = np.empty((num_envs, frame_skip, model.nu))
    models = [model] * num_envs
    datas = [mujoco.MjData(model) for _ in range(threads)]
    with rollout.Rollout(nthread=threads) as pool:
        start = time.perf_counter()
        for t in range(steps):
            ctrl[:] = actions[t][:, None, :]
            pool.rollout(
                models,
                datas,
                state,
                ctrl,
                nstep=frame_skip,
                state=out,
                sensordata=sensordata,
                skip_checks=True,
            )
            state[:] = out[:, -1]
        return num_envs * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="MAML/HalfCheetahVel-v0")
    parser.add_argument("--num-envs", type=int, default=800)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument(
        "--loop-steps",
        type=int,
        default=None,
        help="steps for the Python-loop baseline (default: --steps)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    loop_steps = args.loop_steps or args.steps
    loop = time_python_loop(base_env_id(args.env), args.num_envs, loop_steps, rng)
    loop_bare = time_python_loop(base_env_id(args.env), args.num_envs, loop_steps, rng, True)
    batched, model, frame_skip = time_batched(
        args.env, args.num_envs, args.steps, args.threads, rng
    )
    controls = rng.uniform(-1, 1, (args.steps, args.num_envs, model.nu))
    raw = time_raw_rollout(model, args.num_envs, args.steps, frame_skip, args.threads, controls)
    result = {
        "env": args.env,
        "num_envs": args.num_envs,
        "steps": args.steps,
        "threads": args.threads,
        "python_loop_steps_per_s": round(loop),
        "python_loop_unwrapped_steps_per_s": round(loop_bare),
        "batched_steps_per_s": round(batched),
        "raw_rollout_steps_per_s": round(raw),
        "batched_over_loop": round(batched / loop, 2),
        "batched_over_unwrapped_loop": round(batched / loop_bare, 2),
        "batched_over_raw": round(batched / raw, 2),
    }
    base = base_env_id(args.env)
    print(f"(a) python loop over gym.make({base!r}):    {loop:10.0f} env-steps/s")
    print(f"    same loop over .unwrapped envs:         {loop_bare:10.0f} env-steps/s")
    print(f"(b) batched {args.env}: {batched:10.0f} env-steps/s")
    print(f"(c) raw mujoco.rollout:                     {raw:10.0f} env-steps/s")
    print(
        f"b/a = {batched / loop:.2f}   b/a(unwrapped) = {batched / loop_bare:.2f}"
        f"   b/c = {batched / raw:.2f}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
