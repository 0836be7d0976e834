"""The TRPO meta-step of two checkouts, timed side by side on the same meta-batch.

For each ``--preset``, every checkout in turn (alternating A, B, A, B, ... ``--rounds`` times, so
that drifting machine load hits both alike) starts a fresh process with that checkout first on
``sys.path``, samples one meta-batch with the preset's settings and fixed seeds (identical in both
checkouts as long as their samplers are), and times ``--repeats`` meta-steps from the same theta
(after one warm-up step). Prints the median seconds per checkout (total and the gradient / CG /
line-search split), the ratio A / B, and how far B's parameter update is from A's
(||u_B - u_A|| / ||u_A||: rounding-level when both compute the same step).

    python scripts/meta_step_ab.py --checkout /tmp/old-main --checkout . \\
        --preset navigation halfcheetah-vel-rllab --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

CHILD = r"""
import inspect, json, sys, time
import torch
from maml_rl.config import load_config
from maml_rl.trainer import MAMLTrainer

preset, threads, repeats, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
config = load_config(preset, [
    f"num_threads={threads}", f"torch_threads={threads}", "progress_bar=false", "device=cpu",
    *sys.argv[5:],
])
trainer = MAMLTrainer(config)
learner = trainer.meta_optimizer
tasks = trainer.sample_tasks(10**6)  # a meta-batch no training iteration uses
params = learner.policy.params()
def to_inputs(batch):  # older checkouts also took the iteration
    if len(inspect.signature(trainer._to_loss_inputs).parameters) == 3:
        return trainer._to_loss_inputs(batch, 0, "meta-step A/B")
    return trainer._to_loss_inputs(batch, "meta-step A/B")
inner = []
for j in range(config.num_inner_steps):
    batch = trainer.sampler.sample(tasks, params, config.episodes_per_task, 10**6 + j)
    inner.append(to_inputs(batch))
    params = {k: v.detach() for k, v in learner.adaptation.adapt(inner).items()}
batch = trainer.sampler.sample(tasks, params, config.episodes_per_task, 2 * 10**6)
valid = to_inputs(batch)
def meta_parameters():  # theta, then Meta-SGD's rho where the checkout holds it apart
    adaptation = learner.adaptation
    if hasattr(adaptation, "meta_parameters"):
        return list(adaptation.meta_parameters())
    return list(learner.policy.parameters())
theta = [p.detach().clone() for p in meta_parameters()]
rows = []
for i in range(repeats + 1):
    with torch.no_grad():
        for p, p0 in zip(meta_parameters(), theta):
            p.copy_(p0)
    start = time.perf_counter()
    result = learner.step(inner, valid, generator=torch.Generator().manual_seed(0))
    total = time.perf_counter() - start
    if i > 0:
        rows.append({"total": total, **result.seconds})
new = [p.detach() for p in meta_parameters()]
update = torch.cat([(p - p0).reshape(-1) for p, p0 in zip(new, theta)])
torch.save(update, out + ".pt")
json.dump({"rows": rows, "accepted": result.accepted}, open(out, "w"))
trainer.close()
"""

PARTS = ("total", "gradient", "cg", "line_search")


def run_child(checkout: Path, preset: str, args: argparse.Namespace, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{checkout}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-c", CHILD, preset, str(args.threads), str(args.repeats), str(out)]
    subprocess.run([*cmd, *args.set], cwd=checkout, env=env, check=True)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", type=Path, action="append", required=True)
    parser.add_argument("--preset", nargs="+", default=["navigation", "halfcheetah-vel-rllab"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per checkout")
    parser.add_argument("--set", nargs="*", default=[], help="extra config overrides")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    if len(args.checkout) != 2:
        parser.error("give exactly two --checkout folders (A, then B)")
    a, b = (c.resolve() for c in args.checkout)
    report = {"checkout_a": str(a), "checkout_b": str(b), "presets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.preset:
            rows: dict[str, list[dict]] = {"a": [], "b": []}
            for r in range(args.rounds):
                for key, checkout in (("a", a), ("b", b)):
                    out = Path(tmp) / f"{preset}-{key}-{r}.json"
                    rows[key] += run_child(checkout, preset, args, out)["rows"]
            u_a = torch.load(Path(tmp) / f"{preset}-a-0.json.pt")
            u_b = torch.load(Path(tmp) / f"{preset}-b-0.json.pt")
            med = {
                k: {p: statistics.median(row.get(p, 0.0) for row in rows[k]) for p in PARTS}
                for k in rows
            }
            report["presets"][preset] = {
                "a_s": med["a"],
                "b_s": med["b"],
                "a_over_b": med["a"]["total"] / med["b"]["total"],
                "update_relative_difference": float((u_b - u_a).norm() / u_a.norm()),
                "steps_timed_per_checkout": len(rows["a"]),
            }
            line = report["presets"][preset]
            print(
                f"{preset}: A {med['a']['total']:.2f} s (gradient {med['a']['gradient']:.2f}, "
                f"CG {med['a']['cg']:.2f}, line search {med['a']['line_search']:.2f}); "
                f"B {med['b']['total']:.2f} s (gradient {med['b']['gradient']:.2f}, "
                f"CG {med['b']['cg']:.2f}, line search {med['b']['line_search']:.2f}); "
                f"A/B {line['a_over_b']:.2f}; update difference "
                f"{line['update_relative_difference']:.1e}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
