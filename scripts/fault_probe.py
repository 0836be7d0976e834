"""Fault probe: interrupt tiny trainings at random moments, resume them, compare with the
uninterrupted run. Prints the figures quoted in docs/reliability.md.

Each trial starts ``maml-rl train`` (a tiny 2D-navigation run, a checkpoint every iteration)
and stops it at a random moment with one fault, in turn (8 trials try each): two SIGTERMs or
two SIGINTs 10 ms apart, SIGHUP, SIGQUIT, its stdout pipe closed (``| head``: the run must go on
to the end), kill -9, SIGTERM, SIGINT; then ``--resume`` is run until the run completes, each
resume itself killed at a random moment with probability 1/2. Checkpoint writes are slowed (the
same bytes, written in ten pieces with pauses) so that many kills and second signals land
inside a write. After every graceful stop progress.csv must hold exactly the iterations 1..N of
the checkpoint (and the folder must still be there if it logged any); a run killed -9 before
its first checkpoint is started afresh after removing its folder (a fresh run refuses a folder
with logged iterations).
At the end every trial's progress.csv numbers and final policy must equal the uninterrupted
run's. Also: two resumes into one folder at once.

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
import io, signal, sys, time, torch
for name in ("SIGTERM", "SIGHUP", "SIGQUIT"):  # as in a terminal session, whatever started us
    signal.signal(getattr(signal, name), signal.SIG_DFL)
signal.signal(signal.SIGINT, signal.default_int_handler)
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
ITERATIONS = 25
SETTINGS = [
    "meta_batch_size=4",
    "episodes_per_task=4",
    "hidden_sizes=[64,64]",
    f"num_iterations={ITERATIONS}",
    "checkpoint_every=1",
    "progress_bar=false",
    "seed=3",
]


def start(args: list[str], stdout: int = subprocess.DEVNULL) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        env=env,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )


def numbers(run: Path) -> list[dict[str, str]]:
    with (run / "progress.csv").open() as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def logged(run: Path) -> list[int]:
    """The iterations of the complete rows of progress.csv."""
    if not (run / "progress.csv").is_file():
        return []
    with (run / "progress.csv").open() as f:
        lines = list(csv.reader(f))
    if not lines or "time/iteration" not in lines[0]:
        return []
    col = lines[0].index("time/iteration")
    return [int(float(r[col])) for r in lines[1:] if len(r) == len(lines[0])]


def policy(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=True)["policy"]


def same_run(a: Path, b: Path) -> bool:
    pa, pb = policy(a), policy(b)
    return numbers(a) == numbers(b) and all(torch.equal(pa[k], pb[k]) for k in pa)


FAULTS = [
    "double SIGTERM",
    "double SIGINT",
    "SIGHUP",
    "SIGQUIT",
    "broken pipe",
    "SIGKILL",
    "SIGTERM",
    "SIGINT",
]
"""The fresh run's fault, trial i gets FAULTS[i % 8] (so 8 trials try each); resumes are killed
-9 at random."""


def interrupt(
    proc: subprocess.Popen, run: Path, fault: str, after: float, stats: dict[str, int]
) -> None:
    """Apply ``fault`` after ``after`` seconds unless the process ended; count what happened."""
    if fault == "broken pipe":
        assert proc.stdout is not None
        deadline = time.monotonic() + after
        while time.monotonic() < deadline and proc.stdout.readline():
            pass  # read the table as head would, then stop reading
        if proc.poll() is not None:
            proc.wait()
            return
        proc.stdout.close()
        stats["sent broken pipe"] += 1
        code = proc.wait(timeout=600)
        stats["broken pipes: the run went on to the end (exit 0)"] += int(
            code == 0 and logged(run) == list(range(1, ITERATIONS + 1))
        )
        return
    try:
        proc.wait(timeout=after)
        return
    except subprocess.TimeoutExpired:
        pass
    sig = signal.Signals[fault.split()[-1]]
    before = logged(run)
    proc.send_signal(sig)
    if fault.startswith("double"):
        time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(sig)
    stats[f"sent {fault}"] += 1
    start_wait = time.monotonic()
    proc.wait(timeout=120)
    if sig == signal.SIGKILL:
        return
    stats["graceful stop seconds (max)"] = max(
        stats["graceful stop seconds (max)"], round(time.monotonic() - start_wait)
    )
    err = proc.stderr.read() if proc.stderr else ""
    stats["graceful stops that saved a checkpoint"] += int("checkpoint of iteration" in err)
    stats["graceful stops exit 130"] += int(proc.returncode == 130)
    if proc.returncode != 130:  # e.g. a signal that came while the process was still starting
        key = f"graceful stops with exit {proc.returncode} (stderr: {err.strip()[-60:]!r})"
        stats[key] = stats.get(key, 0) + 1
    stats["graceful stops killed by the second signal after the save"] += int(
        proc.returncode == -sig and "checkpoint of iteration" in err
    )
    saved = (run / "checkpoint.pt").is_file()
    done = int(torch.load(run / "checkpoint.pt", weights_only=True)["iteration"]) if saved else 0
    stats["graceful stops with progress.csv equal to the checkpoint"] += int(
        logged(run) == list(range(1, done + 1))
    )
    stats["graceful stops that lost logged iterations"] += int(
        bool(before) and (not saved or done < max(before))
    )


def trial(base: Path, name: str, fault: str, rng: random.Random, stats: dict[str, int]) -> bool:
    run = base / name
    fresh = ["train", "--quiet", "--set", *SETTINGS, f"log_dir={base}", f"run_name={name}"]
    if fault == "broken pipe":
        proc = start([a for a in fresh if a != "--quiet"], stdout=subprocess.PIPE)
    else:
        proc = start(fresh)
    interrupt(proc, run, fault, rng.uniform(2.0, 14.0), stats)
    for _ in range(50):
        stats["tmp files left by kills inside a write"] += len(list(run.glob("*.tmp")))
        if not (run / "checkpoint.pt").is_file() and run.exists():
            shutil.rmtree(run)  # killed before its first checkpoint: start afresh
            stats["folders removed to start afresh (killed before a checkpoint)"] += 1
        command = (
            fresh if not (run / "checkpoint.pt").is_file() else ["train", "--resume", str(run)]
        )
        proc = start(command)
        if rng.random() < 0.5:
            interrupt(proc, run, "SIGKILL", rng.uniform(2.0, 10.0), stats)
        proc.wait(timeout=600)
        stats["resumes"] += 1
        if proc.returncode == 0:
            break
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
        **{f"sent {fault}": 0 for fault in FAULTS},
        "graceful stops that saved a checkpoint": 0,
        "graceful stops exit 130": 0,
        "graceful stops killed by the second signal after the save": 0,
        "graceful stops with progress.csv equal to the checkpoint": 0,
        "graceful stops that lost logged iterations": 0,
        "graceful stop seconds (max)": 0,
        "broken pipes: the run went on to the end (exit 0)": 0,
        "tmp files left by kills inside a write": 0,
        "folders removed to start afresh (killed before a checkpoint)": 0,
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
            equal = trial(base, f"trial{i}", FAULTS[i % len(FAULTS)], rng, stats)
            stats["runs equal to the uninterrupted one"] += int(equal)
            print(f"trial {i}: {'equal' if equal else 'DIFFERENT'} {stats}", flush=True)
    print(f"{args.trials} trials:")
    for key, value in stats.items():
        print(f"  {key}: {value}")


if __name__ == "__main__":
    main()
