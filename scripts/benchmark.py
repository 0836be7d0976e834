"""Whole meta-iteration benchmark of MAML-TRPO at a preset's settings.

Runs ``--warmup`` + ``--iterations`` meta-iterations of each ``--preset`` and prints, as a table
and as JSON: median seconds per meta-iteration split into sampling, advantages, adaptation and
the meta-step (TRPO gradient, conjugate gradient, line search); the sampler's env-steps/s next
to, measured in the same run and all with actions like the initial policy's (N(0, 1) in the
policy's space, through the family's action mapping):

* the physics limit: MuJoCo families, raw ``mujoco.rollout`` with the same number of states,
  frame skip and threads, without the stages an env computes at the new state; navigation, the
  batched env alone;
* the physics of the same stages: the sampler's own ``mujoco.batch`` stepped as its env steps
  it (frame skip, the stages at the new state such as the exact tasks' ``mj_forward``, the same
  persistence), without observations, rewards or policy: the honest limit of a sampler of
  these envs;
* the sampler's own batched env stepped alone (the same, plus its observations and rewards);
* a naive reference (Gymnasium envs stepped one at a time, one policy forward per env);

and the process's peak memory (max RSS). Unless ``--no-roofline``, the meta-step's roofline
(``scripts/roofline.py``): GFLOP of one gradient, one curvature (Fisher-vector) product and one
line-search evaluation, their seconds, the attainable matrix-multiply rate at the same shapes
measured in the same run, and achieved / attainable for each.

With ``--sampler ray`` the run samples on Ray workers (``--num-workers``, ``--ray-address``) and
also reports the per-call overhead: the median time of a ``RaySampler.sample`` call minus that
of the local ``VectorSampler.sample`` call for the same batch (tasks, parameters, seed).

    python scripts/benchmark.py --preset navigation halfcheetah-vel --iterations 3
    python scripts/benchmark.py --sampler ray --num-workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from benchmark_envs import time_raw_rollout
from roofline import meta_step_roofline

from maml_rl.config import load_config
from maml_rl.family import reset_with_tasks
from maml_rl.policy import replicate
from maml_rl.sampler import VectorSampler
from maml_rl.trainer import MAMLTrainer

PHASES = ("sampling", "advantages", "adaptation", "meta_step")
ROOFLINE_PARTS = ("gradient", "fvp", "line_search_eval")
ROOFLINE_KEYS = [
    *(f"{part}_{unit}" for part in ROOFLINE_PARTS for unit in ("gflop", "s")),
    "attainable_gflops_per_s",
    *(f"{part}_over_attainable" for part in ROOFLINE_PARTS),
]
META_PARTS = ("gradient", "cg", "line_search")


def policy_like_actions(trainer: MAMLTrainer, num_envs: int, steps: int) -> np.ndarray:
    """(steps, num_envs, act_dim) env actions distributed like the initial policy's: N(0, 1)
    in the policy's space, through the family's action mapping (seeded)."""
    space = trainer.sampler._env(num_envs).single_action_space
    rng = np.random.default_rng(0)
    actions = rng.standard_normal((steps, num_envs, space.shape[0])).astype(np.float32)
    return trainer.family.action_mapping(space)(actions)


def physics_limit(trainer: MAMLTrainer, num_envs: int, steps: int, threads: int) -> float:
    """Env-steps/s of the physics alone for ``num_envs`` states (see the module docstring)."""
    env = trainer.sampler._env(num_envs).unwrapped  # the sampler's own batched env
    actions = policy_like_actions(trainer, num_envs, steps)
    if hasattr(env, "model"):
        return time_raw_rollout(env.model, num_envs, steps, env.frame_skip, threads, actions)
    env.reset(seed=0, options={"tasks": trainer.sample_tasks(0)[:1] * num_envs})
    start = time.perf_counter()
    done = 0
    for t in range(steps):
        env.step(actions[t])
        done += num_envs
    return done / (time.perf_counter() - start)


def physics_same_stages(trainer: MAMLTrainer, num_envs: int, steps: int) -> float:
    """Env-steps/s of the sampler's own ``mujoco.batch`` stepped as its env steps it (frame
    skip, stages at the new state, persistence), from the env's initial states of one
    iteration's tasks, every sub-env stepped, no observations or rewards; NaN for an env
    without one (navigation)."""
    env = trainer.sampler._env(num_envs)
    batch = getattr(env.unwrapped, "batch", None)
    if batch is None:
        return float("nan")
    tasks = trainer.sample_tasks(0)
    per_task = num_envs // len(tasks)
    reset_with_tasks(env, [t for t in tasks for _ in range(per_task)], list(range(num_envs)))
    actions = policy_like_actions(trainer, num_envs, min(steps, trainer.family.horizon))
    ctrl, unwrapped = batch.bind("ctrl"), env.unwrapped
    start = time.perf_counter()
    for step_actions in actions:
        ctrl[:] = step_actions
        batch.step(nstep=unwrapped.frame_skip, stage=unwrapped.step_stage)
    return actions.shape[0] * num_envs / (time.perf_counter() - start)


def env_alone(trainer: MAMLTrainer, num_envs: int, steps: int) -> float:
    """Env-steps/s of the sampler's own batched env stepped alone: the same model, stages at
    the new state (the exact tasks' ``mj_forward`` for observations and contact forces),
    observations and rewards as in training, with actions distributed like the initial
    policy's (N(0, 1) in the policy's space, through the family's action mapping) and no
    policy forward. The sampler's ceiling: what it adds to this is its own per-step work."""
    env = trainer.sampler._env(num_envs)
    if not isinstance(env.single_action_space, gym.spaces.Box):
        return float("nan")
    actions = policy_like_actions(trainer, num_envs, min(steps, trainer.family.horizon))
    tasks = trainer.sample_tasks(0)
    per_task = num_envs // len(tasks)
    reset_with_tasks(env, [t for t in tasks for _ in range(per_task)], list(range(num_envs)))
    start = time.perf_counter()
    for step_actions in actions:
        env.step(step_actions)
    return actions.shape[0] * num_envs / (time.perf_counter() - start)


def naive_reference(trainer: MAMLTrainer, num_envs: int, steps: int) -> float:
    """Env-steps/s of single Gymnasium envs stepped one at a time with a policy forward each."""
    envs = [gym.make(trainer.family.env_id, **trainer.family.env_kwargs) for _ in range(num_envs)]
    obs = [env.reset(seed=i)[0] for i, env in enumerate(envs)]
    policy = trainer.policy.to("cpu")
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(steps):
            for i, env in enumerate(envs):
                mean, log_std = policy(torch.as_tensor(obs[i], dtype=torch.float32))
                action = (mean + log_std.exp() * torch.randn_like(mean)).numpy()
                obs[i], _, terminated, truncated, _ = env.step(
                    np.clip(action, env.action_space.low, env.action_space.high)
                )
                if terminated or truncated:
                    obs[i] = env.reset()[0]
    return num_envs * steps / (time.perf_counter() - start)


def ray_overhead(trainer: MAMLTrainer, calls: int) -> dict:
    """Median seconds of a Ray sampler call and of the local sampler's call for the same batch
    (the meta-batch's tasks, per-task parameters, same seed), alternated; checks they are equal."""
    c = trainer.config
    local = VectorSampler(trainer.family, trainer.policy, c.num_threads)
    tasks = trainer.sample_tasks(0)
    params = {
        k: v.detach().clone() for k, v in replicate(trainer.policy.params(), len(tasks)).items()
    }
    local_s, ray_s, equal = [], [], True
    for seed in range(calls + 1):  # the first call of each warms up
        start = time.perf_counter()
        a = local.sample(tasks, params, c.episodes_per_task, seed)
        mid = time.perf_counter()
        b = trainer.sampler.sample(tasks, params, c.episodes_per_task, seed)
        end = time.perf_counter()
        if seed:
            local_s.append(mid - start)
            ray_s.append(end - mid)
        equal &= all(torch.equal(x, y) for x, y in zip(a, b))
    local.close()
    med = statistics.median
    return {
        "local_sample_s": med(local_s),
        "ray_sample_s": med(ray_s),
        "ray_overhead_s": med(r - loc for r, loc in zip(ray_s, local_s)),
        "ray_equals_local": equal,
    }


def bench_preset(name: str, args: argparse.Namespace) -> dict:
    overrides = [f"device={args.device}", "progress_bar=false"]
    if args.threads:
        overrides += [f"num_threads={args.threads}", f"torch_threads={args.threads}"]
    if args.sampler == "ray":
        overrides += [
            "sampler=ray",
            f"num_workers={args.num_workers}",
            f"ray_address={args.ray_address}",
        ]
    overrides += args.set
    config = load_config(name, overrides)
    start = time.perf_counter()
    trainer = MAMLTrainer(config)
    startup = time.perf_counter() - start
    threads = config.num_threads or os.cpu_count() or 1
    rows = []
    for i in range(args.warmup + args.iterations):
        start = time.perf_counter()
        result = trainer.run_iteration(i)
        wall = time.perf_counter() - start
        if i >= args.warmup:
            rows.append((wall, result))
    med = statistics.median
    num_envs = config.meta_batch_size * config.episodes_per_task
    sampling_rate = med(r.env_steps / r.timings["sampling"] for _, r in rows)
    extra: dict = {}
    if config.sampler == "ray":  # the physics limit and naive reference are the local runs'
        limit = naive = alone = same_stages = float("nan")
        extra = {"sampler": f"ray x{config.num_workers}", "startup_s": startup}
        extra.update(ray_overhead(trainer, args.overhead_calls))
    else:
        limit = physics_limit(trainer, num_envs, args.physics_steps, threads)
        same_stages = physics_same_stages(trainer, num_envs, args.physics_steps)
        alone = env_alone(trainer, num_envs, args.physics_steps)
        naive = naive_reference(trainer, min(num_envs, args.naive_envs), args.naive_steps)
    out = {
        "preset": name,
        "env_id": config.env_id,
        "device": str(trainer.device),
        "tasks_x_episodes": f"{config.meta_batch_size}x{config.episodes_per_task}",
        "iterations": args.iterations,
        "iteration_s": med(w for w, _ in rows),
        **{f"{p}_s": med(r.timings.get(p, 0.0) for _, r in rows) for p in PHASES},
        **{
            f"meta_step_{p}_s": med(r.meta_step.seconds.get(p, 0.0) for _, r in rows)
            for p in META_PARTS
        },
        "env_steps_per_iteration": med(r.env_steps for _, r in rows),
        "sampler_steps_per_s": sampling_rate,
        "physics_limit_steps_per_s": limit,
        "physics_same_stages_steps_per_s": same_stages,
        "env_alone_steps_per_s": alone,
        "naive_steps_per_s": naive,
        "sampler_over_limit": sampling_rate / limit,
        "sampler_over_same_stages": sampling_rate / same_stages,
        "sampler_over_env_alone": sampling_rate / alone,
        "sampler_over_naive": sampling_rate / naive,
        **extra,
    }
    out["meta_step_fraction"] = out["meta_step_s"] / out["iteration_s"]
    if args.roofline:
        out.update(meta_step_roofline(trainer, repeats=args.roofline_repeats))
    trainer.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", nargs="+", default=["navigation", "halfcheetah-vel"])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="physics and torch threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--physics-steps", type=int, default=100)
    parser.add_argument("--naive-envs", type=int, default=200)
    parser.add_argument("--naive-steps", type=int, default=20)
    parser.add_argument("--sampler", choices=["vector", "ray"], default="vector")
    parser.add_argument("--num-workers", type=int, default=2, help="Ray workers (--sampler ray)")
    parser.add_argument("--ray-address", default="local", help="local, auto or host:port")
    parser.add_argument("--overhead-calls", type=int, default=5, help="timed calls (ray)")
    parser.add_argument("--set", nargs="*", default=[], help="extra config overrides")
    parser.add_argument(
        "--no-roofline",
        dest="roofline",
        action="store_false",
        help="skip the meta-step's FLOP count and achieved / attainable matmul rate",
    )
    parser.add_argument("--roofline-repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    results = [bench_preset(p, args) for p in args.preset]
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    keys = [
        "iteration_s",
        *(f"{p}_s" for p in PHASES),
        *(f"meta_step_{p}_s" for p in META_PARTS),
        "meta_step_fraction",
        "sampler_steps_per_s",
        "physics_limit_steps_per_s",
        "physics_same_stages_steps_per_s",
        "env_alone_steps_per_s",
        "naive_steps_per_s",
        "sampler_over_limit",
        "sampler_over_same_stages",
        "sampler_over_env_alone",
        "sampler_over_naive",
    ]
    if args.sampler == "ray":
        keys += ["startup_s", "local_sample_s", "ray_sample_s", "ray_overhead_s"]
    if args.roofline:
        keys += ROOFLINE_KEYS
    print(f"machine: {machine}; peak memory (max RSS): {peak_gb:.2f} GB")
    print(f"{'':32s}" + "".join(f"{r['preset']:>22s}" for r in results))
    print(f"{'device':32s}" + "".join(f"{r['device']:>22s}" for r in results))
    if args.sampler == "ray":
        for key in ("sampler", "ray_equals_local"):
            print(f"{key:32s}" + "".join(f"{r[key]!s:>22s}" for r in results))
    for key in keys:
        print(f"{key:32s}" + "".join(f"{r[key]:22.3f}" for r in results))
    payload = {"machine": machine, "peak_rss_gb": peak_gb, "results": results}
    print(json.dumps(payload))
    if args.json:
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
