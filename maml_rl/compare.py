"""Compare MAML-family variants trained on the same task family: curves, time to target,
paper-protocol evaluation of every final policy.

The command ``maml-rl compare`` (:func:`add_compare_parser` registers it in
:mod:`maml_rl.cli`). Runs are folders ``<variant>-s<seed>`` under ``--runs`` (what ``maml-rl
train --set run_name=<variant>-s<seed> log_dir=<runs>`` makes); the variants are those of
:data:`VARIANTS`, whose ``--set`` keys :func:`train_command` prints.
The command writes into ``--out``:

* ``return_vs_env_steps.png`` and ``return_vs_wall_seconds.png``: the mean post-update return of
  each iteration's meta-batch (fresh tasks, after one inner step), smoothed over ``--smooth``
  iterations, mean over seeds (band: min to max over seeds), against environment steps and
  against cumulative wall-clock seconds of training (``time/iteration_s``).
* ``comparison.json`` and ``comparison.md``: per variant, the final smoothed training return,
  wall seconds, env steps, the seconds to reach the target (the reference variant's final
  smoothed return, mean over its seeds) per seed, and the paper-protocol evaluation of each
  final policy (``--eval-tasks`` test tasks from seed 0, 0..3 gradient steps, 4000 env steps
  per step: :func:`maml_rl.evaluation.evaluate_method`), mean over seeds ± standard deviation
  over seeds.
* With ``--time-iterations N``: each variant's seconds per iteration measured alone, one variant
  at a time (a fresh ``maml-rl train`` of N iterations with the config of its first run, median
  of iterations 2..N); the table then adds them and the seconds to the target at that rate
  (iterations to the target times seconds per iteration), and the wall-clock figure uses them,
  so that the load beside the comparison's runs (if they shared the machine) does not decide it.

    maml-rl compare --runs runs/cmp-nav --out results/maml-family/navigation
    maml-rl compare --print-commands --config navigation --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

VARIANTS: dict[str, tuple[str, str]] = {
    "maml-trpo": ("MAML-TRPO", ""),
    "first-order": ("first-order MAML-TRPO", "first_order=true"),
    "promp": ("ProMP", "algorithm=promp inner_objective=lvc"),
    "maml-ppo": ("MAML-PPO", "algorithm=maml-ppo"),
    "dice": ("MAML-TRPO + DiCE", "inner_objective=dice"),
    "meta-sgd": ("Meta-SGD-TRPO", "meta_sgd=true"),
}
"""Variant name -> (label, the ``--set`` keys that make it from a preset)."""

LINE_STYLES: list[Any] = ["-", "--", "-.", ":", (0, (6, 2)), (0, (3, 1, 1, 1, 1, 1))]
"""One line style per variant, so that curves lying on each other stay visible."""

RUN_NAME = re.compile(r"^(?P<variant>[a-z0-9-]+)-s(?P<seed>\d+)$")


@dataclass
class Curve:
    """One run's per-iteration numbers from its ``progress.csv``."""

    variant: str
    seed: int
    path: Path
    env_steps: np.ndarray  # cumulative
    wall_s: np.ndarray  # cumulative training seconds
    post_return: np.ndarray  # mean post-update return of the iteration's meta-batch


def read_curve(run_dir: Path, variant: str | None = None) -> Curve:
    """The :class:`Curve` of run folder ``<variant>-s<seed>`` (any name, seed 0, if
    ``variant`` is given)."""
    match = RUN_NAME.match(run_dir.name) if variant is None else None
    if variant is None and match is None:
        raise ValueError(f"{run_dir}: run folders are named <variant>-s<seed>")
    with open(run_dir / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{run_dir}/progress.csv has no iterations")

    def column(key: str) -> np.ndarray:
        return np.array([float(r[key]) for r in rows])

    return Curve(
        variant or match["variant"],
        int(match["seed"]) if match else 0,
        run_dir,
        column("time/env_steps"),
        np.cumsum(column("time/iteration_s")),
        column("rollout/post_return_mean"),
    )


def collect(runs: Path) -> dict[str, list[Curve]]:
    """Every finished-or-not run under ``runs`` by variant, in :data:`VARIANTS` order, seeds
    sorted; unknown variants raise."""
    found: dict[str, list[Curve]] = {}
    for run_dir in sorted(p for p in runs.iterdir() if (p / "progress.csv").is_file()):
        curve = read_curve(run_dir)
        if curve.variant not in VARIANTS:
            raise ValueError(f"{run_dir}: unknown variant {curve.variant!r} ({list(VARIANTS)})")
        found.setdefault(curve.variant, []).append(curve)
    return {v: sorted(found[v], key=lambda c: c.seed) for v in VARIANTS if v in found}


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average: entry i is the mean of values[max(0, i - window + 1) .. i]."""
    sums = np.cumsum(np.insert(np.asarray(values, dtype=float), 0, 0.0))
    i = np.arange(1, len(values) + 1)
    lo = np.maximum(0, i - window)
    return (sums[i] - sums[lo]) / (i - lo)


def iterations_to_reach(curve: Curve, target: float, window: int) -> int | None:
    """The first iteration (1-based) whose smoothed post-update return is >= ``target``; None if
    none is."""
    reached = np.nonzero(smooth(curve.post_return, window) >= target)[0]
    return int(reached[0]) + 1 if reached.size else None


def seconds_to_reach(curve: Curve, target: float, window: int) -> float | None:
    """The cumulative wall seconds at :func:`iterations_to_reach`; None if never reached."""
    iterations = iterations_to_reach(curve, target, window)
    return None if iterations is None else float(curve.wall_s[iterations - 1])


def final_smoothed(curve: Curve, window: int) -> float:
    """The smoothed post-update return at the last iteration."""
    return float(smooth(curve.post_return, window)[-1])


def summarise(
    curves: dict[str, list[Curve]],
    window: int,
    reference: str = "maml-trpo",
    timed: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Per variant: iterations, final smoothed return (mean, sd over seeds), wall seconds and
    env steps (mean over seeds), and iterations and seconds to the reference's final smoothed
    return (the mean over its seeds) per seed; with ``timed`` (seconds per iteration alone, by
    variant) also the seconds to the target at that rate."""
    if reference not in curves:
        raise ValueError(
            f"no {reference}-s<seed> run: --runs takes the folder holding the <variant>-s<seed> "
            "run folders"
        )
    target = float(np.mean([final_smoothed(c, window) for c in curves[reference]]))
    out: dict[str, Any] = {"target": target, "reference": reference, "window": window}
    variants: dict[str, Any] = {}
    for name, runs in curves.items():
        finals = [final_smoothed(c, window) for c in runs]
        variants[name] = {
            "label": VARIANTS[name][0],
            "set": VARIANTS[name][1],
            "seeds": [c.seed for c in runs],
            "iterations": [len(c.post_return) for c in runs],
            "final_return": float(np.mean(finals)),
            "final_return_sd": float(np.std(finals, ddof=1)) if len(finals) > 1 else 0.0,
            "wall_s": float(np.mean([c.wall_s[-1] for c in runs])),
            "env_steps": float(np.mean([c.env_steps[-1] for c in runs])),
            "seconds_to_target": [seconds_to_reach(c, target, window) for c in runs],
            "iterations_to_target": [iterations_to_reach(c, target, window) for c in runs],
        }
        if timed is not None:
            rate = timed[name]
            variants[name]["timed_s_per_iteration"] = rate
            variants[name]["timed_seconds_to_target"] = [
                None if i is None else i * rate for i in variants[name]["iterations_to_target"]
            ]
    out["variants"] = variants
    return out


def evaluate_runs(
    curves: dict[str, list[Curve]], num_tasks: int, num_steps: int = 3, test_tasks: str = "seeded"
) -> dict[str, Any]:
    """The paper's protocol on every run's final policy: mean return over ``num_tasks`` test
    tasks after 0..num_steps steps, per seed, then mean and sd over seeds per step."""
    from maml_rl.evaluation import evaluate_method, load_method, sample_test_tasks
    from maml_rl.report import EvalSettings

    settings = EvalSettings(num_tasks=num_tasks, num_steps=num_steps, test_tasks=test_tasks)
    out: dict[str, Any] = {"num_tasks": num_tasks, "num_steps": num_steps, "test_tasks": test_tasks}
    for name, runs in curves.items():
        per_seed = []
        for curve in runs:
            print(f"evaluating {curve.path.name} ...", file=sys.stderr, flush=True)
            method = load_method(curve.path, VARIANTS[name][0])
            tasks = sample_test_tasks(method.config, num_tasks, settings.seed, test_tasks)
            result = evaluate_method(method, tasks, settings)
            per_seed.append(result.returns.mean(axis=1).tolist())
        table = np.array(per_seed)
        sd = table.std(axis=0, ddof=1) if len(table) > 1 else np.zeros(table.shape[1])
        out[name] = {"per_seed": per_seed, "mean": table.mean(0).tolist(), "sd": sd.tolist()}
    return out


def time_variants(
    curves: dict[str, list[Curve]], iterations: int, overrides: Sequence[str] = ()
) -> dict[str, float]:
    """Seconds per iteration of each variant alone: a fresh run of ``iterations`` iterations
    with the config of the variant's first run (and ``overrides``, e.g. thread counts), one
    variant at a time, in this machine's state; the median of ``time/iteration_s`` over
    iterations 2..N (the first warms up)."""
    if iterations < 2:
        raise ValueError("--time-iterations must be >= 2 (the first iteration is dropped)")
    out: dict[str, float] = {}
    for name, runs in curves.items():
        print(f"timing {name} alone ({iterations} iterations) ...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            command = [
                sys.executable,
                "-c",
                "from maml_rl.cli import main; raise SystemExit(main())",
                "train",
                "--quiet",
                "--config",
                str(runs[0].path / "config.yaml"),
                "--set",
                *overrides,  # first: the timing's own keys below win
                f"num_iterations={iterations}",
                f"log_dir={tmp}",
                "run_name=timed",
                "progress_bar=false",
                f"checkpoint_every={iterations}",
            ]
            subprocess.run(command, check=True, capture_output=True, timeout=3600)
            timed = read_curve(Path(tmp) / "timed", name)
        out[name] = statistics.median(np.diff(timed.wall_s, prepend=0.0)[1:].tolist())
    return out


def plot(
    curves: dict[str, list[Curve]],
    window: int,
    x: str,
    path: Path,
    title: str,
    timed: dict[str, float] | None = None,
) -> Path:
    """Smoothed post-update return against ``x`` (``env_steps`` or ``wall_s``): mean over seeds
    on the grid of the shortest run, band from min to max over seeds. With ``timed`` the
    wall-clock axis is iterations times each variant's seconds per iteration alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.6), layout="constrained")
    for name, runs in curves.items():

        def axis(c: Curve) -> np.ndarray:
            if x == "wall_s" and timed is not None:
                return np.arange(1, len(c.post_return) + 1) * timed[c.variant]
            return getattr(c, x)

        grid = min(axis(c)[-1] for c in runs)
        xs = np.linspace(0.0, grid, 200)
        ys = np.array([np.interp(xs, axis(c), smooth(c.post_return, window)) for c in runs])
        seeds = f"{len(runs)} seed" + ("s" if len(runs) > 1 else "")
        style = LINE_STYLES[list(VARIANTS).index(name) % len(LINE_STYLES)]
        line = ax.plot(xs, ys.mean(0), linestyle=style, label=f"{VARIANTS[name][0]} ({seeds})")
        if len(runs) > 1:
            ax.fill_between(xs, ys.min(0), ys.max(0), color=line[0].get_color(), alpha=0.15)
    ax.set_xlabel(
        "environment steps"
        if x == "env_steps"
        else "wall-clock seconds of training"
        + (" (at each variant's seconds per iteration alone)" if timed is not None else "")
    )
    ax.set_ylabel(f"post-update return (moving mean of {window} iterations)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _mean_sd(mean: float, sd: float, seeds: int) -> str:
    """``mean ± sd`` over seeds; the mean alone for one seed (no spread measured)."""
    return f"{mean:.2f} ± {sd:.2f}" if seeds > 1 else f"{mean:.2f}"


def markdown(summary: dict[str, Any], evaluation: dict[str, Any] | None) -> str:
    """The comparison table: one row per variant."""
    timed = all("timed_s_per_iteration" in v for v in summary["variants"].values())
    head = "| variant | seeds | iterations | final train return | wall s | s to target |"
    rule = "|---|---|---|---|---|---|"
    if timed:
        head += " s/iteration alone | s to target alone |"
        rule += "---|---|"
    if evaluation is not None:
        steps = evaluation["num_steps"]
        head += "".join(f" test {j} step{'s' if j != 1 else ''} |" for j in range(steps + 1))
        rule += "---|" * (steps + 1)
    lines = [head, rule]
    for name, v in summary["variants"].items():
        reached = [s for s in v["seconds_to_target"] if s is not None]
        to_target = (
            f"{np.mean(reached):.0f} ({len(reached)}/{len(v['seeds'])})" if reached else "never"
        )
        row = (
            f"| {v['label']} | {len(v['seeds'])} | {max(v['iterations'])} | "
            f"{_mean_sd(v['final_return'], v['final_return_sd'], len(v['seeds']))} | "
            f"{v['wall_s']:.0f} | "
            f"{to_target} |"
        )
        if timed:
            alone = [s for s in v["timed_seconds_to_target"] if s is not None]
            row += f" {v['timed_s_per_iteration']:.2f} |" + (
                f" {np.mean(alone):.0f} ({len(alone)}/{len(v['seeds'])}) |" if alone else " never |"
            )
        if evaluation is not None:
            e = evaluation[name]
            row += "".join(
                f" {_mean_sd(m, s, len(v['seeds']))} |" for m, s in zip(e["mean"], e["sd"])
            )
        lines.append(row)
    return "\n".join(lines) + "\n"


def train_command(variant: str, config: str, seed: int, runs: str, extra: str = "") -> str:
    """The ``maml-rl train`` command of one comparison run."""
    keys = " ".join(k for k in (f"seed={seed}", VARIANTS[variant][1], extra) if k)
    return (
        f"maml-rl train --config {config} --quiet --set {keys} log_dir={runs} "
        f"run_name={variant}-s{seed} progress_bar=false"
    )


def reused(path: Path, variants: Sequence[str]) -> tuple[dict[str, float] | None, Any]:
    """The seconds per iteration alone and the evaluation recorded in a ``comparison.json``
    (``--reuse``), so that its figures and tables are redrawn without timing or evaluating."""
    recorded = json.loads(path.read_text())
    rates = {k: v.get("timed_s_per_iteration") for k, v in recorded["summary"]["variants"].items()}
    missing = [v for v in variants if rates.get(v) is None]
    timed = None if missing else {v: float(rates[v]) for v in variants}
    evaluation = recorded.get("evaluation")
    if evaluation is not None and any(v not in evaluation for v in variants):
        raise ValueError(f"{path} has no evaluation of every variant under --runs")
    return timed, evaluation


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``maml-rl compare`` (its arguments below) on the command line's sub-parsers."""
    parser = sub.add_parser(
        "compare",
        help="compare MAML-family variants: curves, time to target, evaluation of each policy",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--runs", type=Path, help="folder of <variant>-s<seed> run folders")
    parser.add_argument("--out", type=Path, help="where the figures and tables go")
    parser.add_argument("--smooth", type=int, default=10, help="moving-mean window (iterations)")
    parser.add_argument("--eval-tasks", type=int, default=40, help="test tasks (0: no evaluation)")
    parser.add_argument("--test-tasks", default="seeded", choices=["seeded", "authors"])
    parser.add_argument("--title", default="", help="figure title (default: the task's folder)")
    parser.add_argument("--print-commands", action="store_true", help="print the runs' commands")
    parser.add_argument("--config", default="navigation", help="preset (with --print-commands)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument(
        "--extra", default="", help="more --set keys for every run (and every timing run)"
    )
    parser.add_argument(
        "--time-iterations", type=int, default=0, help="time each variant alone (0: don't)"
    )
    parser.add_argument(
        "--reuse",
        type=Path,
        help="a comparison.json whose timing alone and evaluation to reuse (redraw only)",
    )
    parser.set_defaults(func=lambda args: run_compare(args, parser))


def run_compare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``maml-rl compare``: print the runs' commands, or check the arguments and compare (a
    mistake is ``parser.error``: one line, exit 2)."""
    if args.print_commands:
        from maml_rl.config import preset_names

        if args.config not in preset_names() and not Path(args.config).is_file():
            parser.error(f"--config {args.config!r}: not a preset ({preset_names()}) or a file")
        for seed in args.seeds:
            for variant in VARIANTS:
                runs = str(args.runs or "runs")
                print(train_command(variant, args.config, seed, runs, args.extra))
        return 0
    if args.runs is None or args.out is None:
        parser.error("--runs and --out are needed (or --print-commands)")
    if not args.runs.is_dir():
        parser.error(f"--runs {args.runs}: no such folder")
    if args.time_iterations and args.reuse:
        parser.error("--time-iterations and --reuse exclude each other")
    if args.time_iterations == 1 or args.time_iterations < 0:
        parser.error("--time-iterations must be 0 or >= 2 (the first iteration is dropped)")
    try:
        return _compare(args)
    except (ValueError, OSError, KeyError) as err:
        parser.error(str(err))


def _compare(args: argparse.Namespace) -> int:
    """Read, time, evaluate, draw and tabulate (``main``'s work once its arguments are checked)."""
    curves = collect(args.runs)
    timed, evaluation = None, None
    if args.reuse:
        timed, evaluation = reused(args.reuse, list(curves))
    elif args.time_iterations:
        timed = time_variants(curves, args.time_iterations, args.extra.split())
    summary = summarise(curves, args.smooth, timed=timed)
    if args.eval_tasks and not args.reuse:
        evaluation = evaluate_runs(curves, args.eval_tasks, 3, args.test_tasks)
    args.out.mkdir(parents=True, exist_ok=True)
    folder = args.runs.resolve()
    title = args.title or (folder.parent.name if folder.name == "variants" else folder.name)
    plot(curves, args.smooth, "env_steps", args.out / "return_vs_env_steps.png", title)
    plot(curves, args.smooth, "wall_s", args.out / "return_vs_wall_seconds.png", title, timed)
    result = {"summary": summary, "evaluation": evaluation}
    (args.out / "comparison.json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(summary, evaluation)
    (args.out / "comparison.md").write_text(table)
    print(table, end="")
    print(f"target: {summary['target']:.2f} (the reference's final smoothed return)")
    return 0


__all__ = [
    "VARIANTS",
    "add_compare_parser",
    "collect",
    "evaluate_runs",
    "markdown",
    "smooth",
    "summarise",
]
