"""Bit-identity reference for restructurings: tiny runs of every algorithm, digested.

Runs, with fixed seeds, a few-iteration training run of each outer optimiser and inner
objective (MAML-TRPO with both curvature products, first order, pretrained, DiCE, LVC, ProMP,
MAML-PPO, Meta-SGD with TRPO and PPO, a discrete-action family, the exact cheetah and ant,
Meta-World's ML1 push when ``metaworld`` is installed), a run resumed from its
checkpoint, and the API's ``adapt`` and ``maml-rl evaluate`` on one of them; then writes one
JSON file of SHA-256 digests: every tensor and number in each checkpoint (wall times
excluded), each ``progress.csv`` without its time columns, the adapted parameters and the
evaluation's returns. Two checkouts that give the same file give the same results::

    python scripts/reference_runs.py --out /tmp/before.json     # on the old checkout
    python scripts/reference_runs.py --out /tmp/after.json      # on the new one
    python scripts/reference_runs.py --compare /tmp/before.json /tmp/after.json

Takes about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

NAV = "MAML/Navigation2D-v0"
TINY = dict(
    env_id=NAV,
    meta_batch_size=3,
    episodes_per_task=4,
    max_episode_steps=20,
    hidden_sizes=[8, 8],
    num_iterations=2,
    num_threads=1,
    torch_threads=1,
    checkpoint_every=100,
    progress_bar=False,
    seed=5,
)
CASES: dict[str, dict[str, Any]] = {
    "trpo_gauss_newton": {},
    "trpo_exact": {"hvp": "exact"},
    "trpo_first_order": {"first_order": True},
    "trpo_two_inner_steps": {"num_inner_steps": 2},
    "pretrained": {"num_inner_steps": 0},
    "trpo_dice": {"inner_objective": "dice"},
    "trpo_lvc_subsampled": {"inner_objective": "lvc", "cg_subsample": 0.5},
    "promp": {"algorithm": "promp", "inner_objective": "lvc", "inner_kl_adaptive": True},
    "maml_ppo": {"algorithm": "maml-ppo", "outer_steps": 2},
    "meta_sgd_trpo": {"meta_sgd": True},
    "meta_sgd_trpo_exact": {"meta_sgd": True, "hvp": "exact"},
    "meta_sgd_ppo": {"meta_sgd": True, "algorithm": "maml-ppo", "outer_steps": 2},
    "discrete_bandit": {"env_id": "MAML/BernoulliBandit-K5-v0", "max_episode_steps": 1},
    "discrete_tabular": {"env_id": "MAML/TabularMDP-v0", "max_episode_steps": 10},
    "cheetah_rllab": {
        "env_id": "MAML/HalfCheetahVel-rllab-v0",
        "meta_batch_size": 2,
        "episodes_per_task": 2,
        "max_episode_steps": 15,
        "num_iterations": 1,
    },
    "ant_rllab": {
        "env_id": "MAML/AntVel-rllab-v0",
        "meta_batch_size": 2,
        "episodes_per_task": 3,
        "max_episode_steps": 40,
        "num_iterations": 1,
    },
}
try:  # Meta-World's family (the weld fix, the contact walk in array form) when installed
    import metaworld  # noqa: F401

    CASES["metaworld_push"] = {
        "env_id": "MAML/MetaWorld-ML1-push-v0",
        "meta_batch_size": 2,
        "episodes_per_task": 2,
        "max_episode_steps": 30,
        "num_iterations": 1,
    }
except ImportError:
    pass


def digest(value: Any) -> str:
    """SHA-256 of a tensor, array, number or nested structure of them (exact bytes)."""
    h = hashlib.sha256()

    def feed(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy())
        elif isinstance(v, np.ndarray):
            h.update(f"A{v.dtype}{v.shape}".encode())
            h.update(np.ascontiguousarray(v).tobytes())
        elif isinstance(v, dict):
            for k in sorted(v, key=str):
                h.update(f"K{k}".encode())
                feed(v[k])
        elif isinstance(v, (list, tuple)):
            h.update(f"L{len(v)}".encode())
            for x in v:
                feed(x)
        else:
            h.update(repr(v).encode())

    feed(value)
    return h.hexdigest()[:16]


TIME_KEYS = ("time", "wall", "elapsed", "_s", "seconds", "started", "date", "source")
"""Keys dropped before digesting: wall times, and the temporary folder a result names."""


def without_times(v: Any) -> Any:
    """``v`` with every wall-time-like entry of its dicts dropped."""
    if isinstance(v, dict):
        return {
            k: without_times(x)
            for k, x in v.items()
            if not any(t in str(k).lower() for t in TIME_KEYS) or k == "time/env_steps"
        }
    if isinstance(v, (list, tuple)):
        return type(v)(without_times(x) for x in v)
    return v


def checkpoint_digests(run_dir: Path) -> dict[str, str]:
    """A digest per top-level entry of the run's checkpoint (times dropped)."""
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    return {
        str(k): digest(without_times(v))
        for k, v in sorted(state.items())
        if not any(t in str(k).lower() for t in TIME_KEYS)
    }


def progress_digest(run_dir: Path) -> str:
    """Digest of ``progress.csv`` without its time columns and messages."""
    with open(run_dir / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    keep = [
        {
            k: v
            for k, v in r.items()
            if not k.startswith(("time/", "train/rejected")) or k == "time/env_steps"
        }
        for r in rows
    ]
    return digest(keep)


def run_all(workdir: Path) -> dict[str, Any]:
    """Every case's digests."""
    import maml_envs  # noqa: F401  (registers the families)
    from maml_rl.cli import main as cli_main
    from maml_rl.config import TrainConfig
    from maml_rl.run import load_policy, resume, train

    out: dict[str, Any] = {}
    quiet = contextlib.redirect_stdout(io.StringIO())
    for name, overrides in CASES.items():
        values = {**TINY, **overrides}
        config = TrainConfig(**values, config_name=name).validate()
        with quiet:
            run_dir = train(config, run_dir=workdir / name, stdout=False)
        out[name] = {
            "checkpoint": checkpoint_digests(run_dir),
            "progress": progress_digest(run_dir),
        }
        print(f"{name}: done", file=sys.stderr)

    # Resume: 1 iteration, then resumed to 2, equals 2 in one go (and its digests are recorded).
    config = TrainConfig(**{**TINY, "num_iterations": 1}, config_name="resume").validate()
    with quiet:
        run_dir = train(config, run_dir=workdir / "resumed", stdout=False)
        resume(run_dir, {"num_iterations": 2}, stdout=False)
    out["resumed"] = {
        "checkpoint": checkpoint_digests(run_dir),
        "progress": progress_digest(run_dir),
    }

    # API: adapt a trained policy (Gaussian, Meta-SGD, categorical) to a fixed task.
    from maml_rl.api import adapt

    for name in ("trpo_gauss_newton", "meta_sgd_trpo", "discrete_tabular"):
        policy, config = load_policy(workdir / name)
        import gymnasium as gym

        task = gym.make(config.env_id, **config.env_kwargs).unwrapped.sample_tasks(
            1, np.random.default_rng(11)
        )[0]
        adapted = adapt(policy, config, task, num_steps=2, episodes=3, seed=4)
        out[f"adapt_{name}"] = {
            "params": digest(adapted.params),
            "returns": digest(adapted.returns),
        }

    # CLI evaluation: returns after 0..2 steps on seeded test tasks, with random init.
    for name in ("trpo_gauss_newton", "meta_sgd_trpo", "discrete_bandit"):
        target = workdir / f"eval_{name}"
        with quiet:
            rc = cli_main(
                [
                    "evaluate",
                    str(workdir / name),
                    "--num-tasks",
                    "3",
                    "--num-steps",
                    "2",
                    "--env-steps",
                    "60",
                    "--seed",
                    "2",
                    "--random-init",
                    "--no-plots",
                    "--output",
                    str(target),
                ]
            )
        if rc:
            raise SystemExit(f"evaluate {name} exited {rc}")
        returns = json.loads((target / "returns.json").read_text())
        out[f"evaluate_{name}"] = {"returns": digest(without_times(returns))}
    return out


def compare(a: Path, b: Path) -> int:
    """Print the entries that differ between two digest files; 0 when none does."""
    x, y = json.loads(a.read_text()), json.loads(b.read_text())
    bad = 0
    for case in sorted(set(x) | set(y)):
        if x.get(case) != y.get(case):
            bad += 1
            print(f"DIFFERS {case}:\n  {x.get(case)}\n  {y.get(case)}")
    print(f"{len(set(x) | set(y)) - bad} equal, {bad} differ")
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the digests here")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    if not args.out:
        parser.error("--out or --compare is needed")
    torch.set_num_threads(1)
    np.random.seed(0)  # checkpoints record numpy's global state
    with tempfile.TemporaryDirectory() as tmp:
        result = run_all(Path(tmp))
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out} ({len(result)} cases)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
