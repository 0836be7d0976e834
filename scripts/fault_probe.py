"""Fault probe: interrupt tiny trainings at random moments, resume them, compare with the
uninterrupted run. Prints the figures quoted in docs/reliability.md.

Each trial starts ``maml-rl train`` (a tiny 2D-navigation run, a checkpoint every iteration)
and stops it at a random moment with kill -9, SIGTERM or SIGINT; then ``--resume`` is run
until the run completes, each resume itself killed at a random moment with probability 1/2.
Checkpoint writes are slowed (the same bytes, written in ten pieces with pauses) so that many
kills land inside a write. At the end every trial's progress.csv numbers and final policy must
equal the uninterrupted run's. Also: two resumes into one folder at once.

    python scripts/fault_probe.py --trials 20 --seed 0
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import io, sys, time, torch
real = torch.save
def slow(obj, f, *args, **kwargs):
    buf = io.BytesIO()
    real(obj, buf, *args, **kwargs)
    data = buf.getvalue()
    step = max(1, len(data) // 10)
    for i in range(0, len(data), step):
        f.write(data[i:i + step]); f.flush(); time.sleep(0.02)
torch.save = slow
from maml_rl.cli import main
sys.exit(main(sys.argv[1:]))
"""
SETTINGS = [
    "meta_batch_size=4",
    "episodes_per_task=4",
    "hidden_sizes=[64,64]",
    "num_iterations=25",
    "checkpoint_every=1",
    "progress_bar=false",
    "seed=3",
]


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def numbers(run: Path) -> list[dict[str, str]]:
    with (run / "progress.csv").open() as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def policy(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=True)["policy"]


def same_run(a: Path, b: Path) -> bool:
    pa, pb = policy(a), policy(b)
    return numbers(a) == numbers(b) and all(torch.equal(pa[k], pb[k]) for k in pa)


def interrupt(proc: subprocess.Popen, sig: int, after: float, stats: dict[str, int]) -> None:
    """Send ``sig`` after ``after`` seconds unless the process ended; count what happened."""
    try:
        proc.wait(timeout=after)
        return
    except subprocess.TimeoutExpired:
        pass
    proc.send_signal(sig)
    stats[f"sent {signal.Signals(sig).name}"] += 1
    start_wait = time.monotonic()
    proc.wait(timeout=120)
    if sig != signal.SIGKILL:
        stats["graceful stop seconds (max)"] = max(
            stats["graceful stop seconds (max)"], round(time.monotonic() - start_wait)
        )
        if "checkpoint of iteration" in (proc.stderr.read() if proc.stderr else ""):
            stats["graceful stops that saved a checkpoint"] += 1


def trial(base: Path, name: str, rng: random.Random, stats: dict[str, int]) -> bool:
    run = base / name
    fresh = ["train", "--quiet", "--set", *SETTINGS, f"log_dir={base}", f"run_name={name}"]
    sig = rng.choice([signal.SIGKILL, signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
    interrupt(start(fresh), sig, rng.uniform(2.0, 14.0), stats)
    for _ in range(50):
        stats["tmp files left by kills inside a write"] += len(list(run.glob("*.tmp")))
        command = (
            fresh if not (run / "checkpoint.pt").is_file() else ["train", "--resume", str(run)]
        )
        proc = start(command)
        if rng.random() < 0.5:
            interrupt(proc, signal.SIGKILL, rng.uniform(2.0, 10.0), stats)
        proc.wait(timeout=600)
        if proc.returncode == 0:
            stats["resumes"] += 1
            break
        stats["resumes"] += 1
    return same_run(run, base / "reference")


def concurrent(base: Path, iterations: int, stats: dict[str, int]) -> None:
    """Two resumes into one folder at once (each asking for more iterations): one may run."""
    run = base / "concurrent"
    if not run.exists():
        shutil.copytree(base / "reference", run)
    more = ["--set", f"num_iterations={iterations}"]
    a, b = (
        start(["train", "--resume", str(run), *more]),
        start(["train", "--resume", str(run), *more]),
    )
    codes = sorted([a.wait(timeout=600), b.wait(timeout=600)])
    stats["concurrent resumes: one ran, one refused (exit 2)"] += int(codes == [0, 2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrent", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    stats: dict[str, int] = {
        "sent SIGKILL": 0,
        "sent SIGTERM": 0,
        "sent SIGINT": 0,
        "graceful stops that saved a checkpoint": 0,
        "graceful stop seconds (max)": 0,
        "tmp files left by kills inside a write": 0,
        "resumes": 0,
        "runs equal to the uninterrupted one": 0,
        "concurrent resumes: one ran, one refused (exit 2)": 0,
    }
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        ref = start(
            ["train", "--quiet", "--set", *SETTINGS, f"log_dir={base}", "run_name=reference"]
        )
        assert ref.wait(timeout=600) == 0, ref.stderr.read() if ref.stderr else ""
        for i in range(args.concurrent):
            concurrent(base, 30 + 5 * i, stats)
            print(f"concurrent {i}: {stats}", flush=True)
        for i in range(args.trials):
            equal = trial(base, f"trial{i}", rng, stats)
            stats["runs equal to the uninterrupted one"] += int(equal)
            print(f"trial {i}: {'equal' if equal else 'DIFFERENT'} {stats}", flush=True)
    print(f"{args.trials} trials:")
    for key, value in stats.items():
        print(f"  {key}: {value}")


if __name__ == "__main__":
    main()
