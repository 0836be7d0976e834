"""Figures of a meta-test evaluation (matplotlib, Agg backend; no display needed).

* :func:`plot_returns`: mean return over the test tasks (± standard error) against the number of
  gradient steps, one line per method, an oracle as a horizontal line (Finn et al. 2017, Fig. 5).
* :func:`plot_success`: success rate over the test tasks (± standard error) against the number
  of gradient steps, for families that report ``info["success"]`` (Meta-World).
* :func:`plot_trajectories`: 2D-navigation paths before and after adaptation with the goals
  marked (Finn et al. 2017, Fig. 4).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    from maml_rl.report import EvaluationReport, MethodResult

_COLORS = {"maml": "tab:blue", "pretrained": "tab:orange", "random": "tab:gray"}
_ORACLE_COLOR = "tab:green"


def plot_returns(report: EvaluationReport, path: str | Path) -> Path:
    """Return vs gradient steps with standard-error bars; oracles as dashed horizontal lines."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    steps = np.arange(report.settings.num_steps + 1)
    adapted = [r for r in report.results if r.kind != "oracle"]
    # each method's points a little apart, so that overlapping error bars stay readable
    offsets = {id(r): 0.06 * (i - (len(adapted) - 1) / 2) for i, r in enumerate(adapted)}
    for r in report.results:
        if r.kind == "oracle":
            m, e = float(r.mean[0]), float(r.stderr[0])
            ax.axhline(
                m, color=_ORACLE_COLOR, linestyle="--", label=f"{r.display_label} (no adaptation)"
            )
            ax.axhspan(m - e, m + e, color=_ORACLE_COLOR, alpha=0.15, linewidth=0)
            continue
        ax.errorbar(
            steps[: len(r.mean)] + offsets[id(r)],
            r.mean,
            yerr=r.stderr,
            marker="o",
            capsize=4,
            color=_COLORS.get(r.kind),
            label=r.display_label,
        )
    return _finish(fig, ax, report, "average return (mean ± s.e. over tasks)", path)


def _finish(fig: Any, ax: Any, report: EvaluationReport, ylabel: str, path: str | Path) -> Path:
    """Axes labels, the title (:func:`_title`), grid and legend of a plot against the number
    of gradient steps; saved to ``path``."""
    ax.set_xticks(np.arange(report.settings.num_steps + 1))
    ax.set_xlabel("number of gradient steps")
    ax.set_ylabel(ylabel)
    ax.set_title(_title(report))
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _title(report: EvaluationReport) -> str:
    """``<env>``, then ``N test tasks, K rollouts per step`` (with separate measured rollouts:
    adapted on K, measured on E) on a second line."""
    from maml_rl.report import rollouts_text

    s = report.settings
    tasks = "authors' test tasks" if s.test_tasks == "authors" else "test tasks"
    return f"{report.env_id}\n{s.num_tasks} {tasks}, {rollouts_text(report, short=True)}"


def plot_success(report: EvaluationReport, path: str | Path) -> Path:
    """Success rate (percent of each task's rollouts that succeeded, mean ± s.e. over the test
    tasks) against the number of gradient steps, one line per method that reports success."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    steps = np.arange(report.settings.num_steps + 1)
    measured = [r for r in report.results if r.success is not None]
    for i, r in enumerate(measured):
        assert r.success is not None
        rate = 100.0 * r.success
        n = rate.shape[1]
        err = rate.std(axis=1, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(rate.shape[0])
        offset = 0.06 * (i - (len(measured) - 1) / 2)
        color = _ORACLE_COLOR if r.kind == "oracle" else _COLORS.get(r.kind)
        ax.errorbar(
            steps[: rate.shape[0]] + offset,
            rate.mean(axis=1),
            yerr=err,
            marker="o",
            capsize=4,
            color=color,
            label=r.display_label,
        )
    ax.set_ylim(-5, 105)
    return _finish(fig, ax, report, "success rate, % (mean ± s.e. over tasks)", path)


def plot_trajectories(
    report: EvaluationReport,
    result: MethodResult,
    path: str | Path,
    num_tasks: int = 4,
    episodes: int = 2,
) -> Path:
    """Paths (the observed positions) of the first ``num_tasks`` test tasks before adaptation,
    after one step and after the last step; goal as a star, start as a dot."""
    steps = sorted({0, min(1, len(result.rollouts) - 1), len(result.rollouts) - 1})
    styles = {0: ("tab:gray", "--")}
    palette = ["tab:blue", "tab:red"]
    n = min(num_tasks, len(report.tasks))
    fig, axes = plt.subplots(1, n, figsize=(3.3 * n, 3.7), layout="constrained", squeeze=False)
    for i, ax in enumerate(axes[0]):
        goal = np.asarray(report.tasks[i].as_array())
        for s_index, j in enumerate(steps):
            obs, mask = result.rollouts[j]
            color, style = styles.get(j, (palette[min(s_index - 1, 1)], "-"))
            name = "pre-update" if j == 0 else f"{j} step{'s' if j > 1 else ''}"
            for k in range(min(episodes, obs.shape[2])):
                valid = mask[:, i, k] > 0
                xy = obs[valid, i, k, :2]
                ax.plot(
                    xy[:, 0],
                    xy[:, 1],
                    style,
                    color=color,
                    linewidth=1.3,
                    alpha=0.9,
                    label=name if k == 0 else None,
                )
        ax.plot(
            *goal[:2],
            marker="*",
            markersize=14,
            color="gold",
            markeredgecolor="k",
            linestyle="none",
            label="goal",
        )
        ax.plot(0, 0, marker="o", color="k", markersize=4, linestyle="none", label="start")
        ax.set_title(f"task {i}: goal ({goal[0]:.2f}, {goal[1]:.2f})", fontsize=9)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel("x")
        if i == 0:
            ax.set_ylabel("y")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{result.display_label} on {report.env_id}: paths before and after adaptation")
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_label(run_dir: str | Path) -> str:
    """A run's legend name from its ``config.yaml``: the method (``MAML``, ``ProMP``,
    ``pretrained``, ... as ``maml-rl evaluate`` names it), the preset or file the config came
    from and the seed, e.g. ``MAML (navigation, seed 1)``; the folder's name when the run has
    no readable config."""
    import yaml

    from maml_rl.comparisons import run_kind
    from maml_rl.config import from_dict
    from maml_rl.labels import DEFAULT_LABELS, maml_variant_label

    run = Path(run_dir)
    try:
        config = from_dict(yaml.safe_load((run / "config.yaml").read_text()) or {})
        kind = run_kind(run)
    except (OSError, ValueError, TypeError, KeyError, yaml.YAMLError):
        return run.name
    name = maml_variant_label(config) if kind == "maml" else DEFAULT_LABELS.get(kind, kind)
    return f"{name} ({config.config_name}, seed {config.seed})"


def plot_training_curves(
    run_dirs: list[Path], path: str | Path, labels: list[str] | None = None
) -> Path:
    """Pre- and post-adaptation return (mean over the meta-batch) per meta-iteration, read from
    each run's ``progress.csv``; post-adaptation solid, pre-adaptation dashed. The legend names
    each run by ``labels`` when given, else by :func:`run_label` (its folder's name where two
    runs would get the same label). A partial last row (a run killed mid-write) is left out; a
    run without logged iterations is a ``ValueError`` naming it."""
    from maml_rl.logger import ITERATION_KEY, PROGRESS_CSV, read_progress

    if labels:
        names = list(labels)
    else:
        names = [run_label(run) for run in run_dirs]
        names = [
            n if names.count(n) == 1 else f"{n}: {Path(run).name}"
            for n, run in zip(names, run_dirs)
        ]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    for i, run in enumerate(run_dirs):
        _, rows = read_progress(Path(run) / PROGRESS_CSV)
        rows = [r for r in rows if r.get(ITERATION_KEY) and r.get("rollout/post_return_mean")]
        if not rows:
            plt.close(fig)
            raise ValueError(f"{run} has no logged iterations (no {PROGRESS_CSV} rows)")
        it = [int(float(r[ITERATION_KEY])) for r in rows]
        color = f"C{i}"
        label = names[i]
        post = [float(r["rollout/post_return_mean"]) for r in rows]
        pre = [float(r["rollout/pre_return_mean"]) for r in rows]
        ax.plot(it, post, color=color, label=f"{label}: after adaptation")
        ax.plot(it, pre, color=color, linestyle="--", alpha=0.7, label=f"{label}: before")
    ax.set_xlabel("meta-iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("mean return over the meta-batch")
    ax.set_title("training: mean return over the meta-batch per meta-iteration")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
