"""Reward terms, episode lengths and terminations of a task family under a random policy.

The policy is the one a MAML run starts from, in distribution: actions ~ N(0, 1) in the
normalised space [-1, 1] (clipped), mapped onto the env's bounds as ``normalize_actions`` does.
Prints, per env id, the mean and std of the return over ``--episodes`` episodes (one task each,
drawn from the family with ``--seed``), the mean episode length, the fraction of episodes that
terminated before the horizon, the largest |observation| seen, and each reward term's mean per
step (over steps before termination).

    python scripts/task_stats.py MAML/AntVel-rllab-v0 MAML/AntVel-v0 --episodes 200
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np

import maml_envs  # noqa: F401  (registers the MAML/ ids)


def random_policy_stats(env_id: str, episodes: int, seed: int) -> dict[str, float]:
    """Statistics of ``episodes`` random-policy episodes of ``env_id`` (see the module doc)."""
    venv = gym.make_vec(
        env_id, num_envs=episodes, vectorization_mode="vector_entry_point", num_threads=1
    )
    tasks = venv.unwrapped.sample_tasks(episodes, np.random.default_rng(seed))
    venv.reset(seed=seed, options={"tasks": tasks})
    rng = np.random.default_rng(seed + 1)
    low, high = venv.single_action_space.low, venv.single_action_space.high
    horizon = venv.unwrapped.max_episode_steps
    returns = np.zeros(episodes)
    lengths = np.zeros(episodes)
    alive = np.ones(episodes, dtype=bool)
    terms: dict[str, float] = {}
    largest_obs = 0.0
    for _ in range(horizon):
        unit = np.clip(rng.standard_normal((episodes, low.shape[0])), -1.0, 1.0)
        actions = low + (unit + 1.0) * 0.5 * (high - low)
        obs, rewards, terminated, truncated, info = venv.step(actions)
        for key, value in info.items():
            if key.startswith("reward_"):
                terms[key] = terms.get(key, 0.0) + float(value[alive].sum())
        largest_obs = max(largest_obs, float(np.abs(obs[alive]).max(initial=0.0)))
        returns += rewards
        lengths += alive
        alive &= ~(terminated | truncated)
    venv.close()
    steps = lengths.sum()
    return {
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "length_mean": float(lengths.mean()),
        "terminated_fraction": float((lengths < horizon).mean()),
        "largest_abs_obs": largest_obs,
        **{f"{key}_per_step": total / steps for key, total in terms.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("env_ids", nargs="+")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for env_id in args.env_ids:
        stats = random_policy_stats(env_id, args.episodes, args.seed)
        print(env_id)
        for key, value in stats.items():
            print(f"  {key:28s} {value:10.4f}")


if __name__ == "__main__":
    main()
