"""What a meta-test evaluation produced: its settings, each method's returns, the table and files.

The values :mod:`maml_rl.evaluation` computes and :mod:`maml_rl.plots` and :mod:`maml_rl.video`
draw (they import this module, never the evaluation itself).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maml_rl.files import publish_together
from maml_rl.policy import MLPPolicy, Params

TEST_TASK_SOURCES = ("seeded", "authors")


@dataclass
class EvalSettings:
    """The protocol's knobs (defaults: the authors' test scripts)."""

    num_tasks: int = 40
    """Test tasks N."""
    num_steps: int = 3
    """Gradient steps; returns are reported after 0..num_steps steps."""
    env_steps: int = 4000
    """Environment steps per gradient step; K = ceil(env_steps / H) rollouts per task."""
    seed: int = 0
    """Test seed: fixes the test tasks and the rollouts' noise (the same for every method)."""
    alpha: float | None = None
    """First step size (later steps alpha / 2); None: the run's ``inner_lr``."""
    test_tasks: str = "seeded"
    """``seeded``: N tasks drawn from the family with the test seed; ``authors``: the tasks the
    authors' test scripts fix (:mod:`maml_rl.authors_tasks`; the seed still drives rollouts)."""
    eval_episodes: int | None = None
    """None: each step's numbers are those of the K rollouts adapted on (the authors'
    protocol); E: those of E separate rollouts per task with the same parameters (Meta-World+'s
    protocol: adapt on K = 10, evaluate on E = 3)."""

    def validate(self) -> EvalSettings:
        for key in ("num_tasks", "env_steps"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.eval_episodes is not None and int(self.eval_episodes) < 1:
            raise ValueError(f"eval_episodes must be >= 1, got {self.eval_episodes}")
        if self.num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {self.num_steps}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if self.test_tasks not in TEST_TASK_SOURCES:
            raise ValueError(
                f"test_tasks must be one of {TEST_TASK_SOURCES}, got {self.test_tasks!r}"
            )
        return self


@dataclass
class MethodResult:
    """One method's returns on the test tasks.

    ``returns[j, i]`` is the mean return of task i's K rollouts after j gradient steps (one row
    for a method evaluated without adaptation, such as the oracle).
    """

    label: str
    kind: str
    source: str
    returns: np.ndarray
    step_sizes: list[float] = field(default_factory=list)
    rollouts: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list, repr=False)
    """Per step: observations ``[T, N, K, obs_dim]`` and mask ``[T, N, K]`` (when kept)."""
    policy: MLPPolicy | None = field(default=None, repr=False)
    params: list[Params] = field(default_factory=list, repr=False)
    """Per step j: the parameters the rollouts of step j were sampled with (when kept)."""
    iteration: int | None = None
    """The training iteration of the evaluated checkpoint (None: an untrained policy, an
    oracle, or a policy not loaded from a checkpoint)."""
    success: np.ndarray | None = None
    """``success[j, i]``: fraction of task i's K rollouts after j steps that succeeded at some
    step, when the env reports ``info["success"]`` (Meta-World); else None."""

    @property
    def display_label(self) -> str:
        """The label with the evaluated iteration, e.g. ``MAML (iteration 50)``."""
        return (
            self.label if self.iteration is None else f"{self.label} (iteration {self.iteration})"
        )

    @property
    def mean(self) -> np.ndarray:
        return self.returns.mean(axis=1)

    @property
    def stderr(self) -> np.ndarray:
        n = self.returns.shape[1]
        if n < 2:
            return np.zeros(self.returns.shape[0])
        return self.returns.std(axis=1, ddof=1) / math.sqrt(n)


@dataclass
class EvaluationReport:
    """All methods' results on the same test tasks."""

    env_id: str
    settings: EvalSettings
    horizon: int
    episodes_per_task: int
    tasks: list[Any]
    results: list[MethodResult]
    files: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        s = self.settings
        return {
            "env_id": self.env_id,
            "num_tasks": s.num_tasks,
            "num_steps": s.num_steps,
            "env_steps_per_step": s.env_steps,
            "horizon": self.horizon,
            "episodes_per_task": self.episodes_per_task,
            # absent: measured on the rollouts adapted on (the files of earlier versions)
            **({} if s.eval_episodes is None else {"eval_episodes": s.eval_episodes}),
            "seed": s.seed,
            "test_tasks": s.test_tasks,
            "tasks": [np.asarray(t.as_array()).tolist() for t in self.tasks],
            "methods": [
                {
                    "label": r.label,
                    "kind": r.kind,
                    "source": r.source,
                    "iteration": r.iteration,
                    "step_sizes": r.step_sizes,
                    "mean": r.mean.tolist(),
                    "stderr": r.stderr.tolist(),
                    "returns": r.returns.tolist(),
                    **(
                        {}
                        if r.success is None
                        else {
                            "success_mean": r.success.mean(axis=1).tolist(),
                            "success": r.success.tolist(),
                        }
                    ),
                }
                for r in self.results
            ],
        }


def rollouts_text(report: EvaluationReport, short: bool = False) -> str:
    """What each step's numbers come from: ``K rollouts per task and step``, or with separate
    measured rollouts ``adapted on K rollouts per task and step, measured on E others``
    (``short``: ``K rollouts per step``, ``adapted on K, measured on E rollouts``; plot titles)."""
    k, e = report.episodes_per_task, report.settings.eval_episodes
    if e is None:
        return f"{k} rollouts per step" if short else f"{k} rollouts per task and step"
    if short:
        return f"adapted on {k}, measured on {e} rollouts"
    return f"adapted on {k} rollouts per task and step, measured on {e} others"


def format_table(report: EvaluationReport) -> str:
    """Mean return +- standard error over the test tasks, one row per method, one column per
    number of gradient steps (an oracle's single number sits in the 0-step column)."""
    n = report.settings.num_steps
    header = ["method", *[f"{j} step{'s' if j != 1 else ''}" for j in range(n + 1)]]
    rows = []
    for r in report.results:
        cells = [f"{m:.2f} ± {e:.2f}" for m, e in zip(r.mean, r.stderr)]
        cells += ["-"] * (n + 1 - len(cells))
        rows.append([r.label, *cells])
    for r in report.results:  # Meta-World: success rate after 0..n steps
        if r.success is not None:
            rates = [f"{100 * m:.1f}%" for m in r.success.mean(axis=1)]
            rows.append([f"{r.label}: success", *rates, *["-"] * (n + 1 - len(rates))])
    widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(
            cell.ljust(w) if c == 0 else cell.rjust(w)
            for c, (cell, w) in enumerate(zip(row, widths))
        )

    s = report.settings
    tasks = "the authors' " if s.test_tasks == "authors" else ""
    title = (
        f"{report.env_id}: mean return ± s.e. over {tasks}{s.num_tasks} test tasks "
        f"(seed {s.seed}, {rollouts_text(report)})"
    )
    return "\n".join([title, line(header), line(["-" * w for w in widths]), *map(line, rows)])


RESULT_FILES = ("returns.csv", "returns.json")
"""What :func:`write_report` publishes together, in order: ``returns.json`` last, the commit."""


def write_report(report: EvaluationReport, output_dir: str | Path) -> dict[str, Path]:
    """Write ``returns.json`` and ``returns.csv`` (per task, per step, per method) as one result
    (:func:`~maml_rl.files.publish_together`): both go to temporary files first, and only when
    both are complete are they renamed over the old ones, ``returns.csv`` first and
    ``returns.json`` last. A failure or kill while writing leaves the earlier results as they
    were and no partial file; a ``returns.json`` is always beside the ``returns.csv`` of its
    own evaluation (or, killed in the microseconds between the two renames, a newer one)."""
    out = Path(output_dir)
    csv_path, json_path = (out / name for name in RESULT_FILES)
    text = json.dumps(report.to_dict(), indent=1) + "\n"

    def write_csv(f: Any) -> None:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["method", "kind", "step", "task_index", "task", "return"])
        for r in report.results:
            for j, row in enumerate(r.returns):
                for i, value in enumerate(row):
                    task = " ".join(f"{x:g}" for x in np.asarray(report.tasks[i].as_array()))
                    writer.writerow([r.label, r.kind, j, i, task, f"{value:.6f}"])

    publish_together([(csv_path, write_csv, "w"), (json_path, lambda f: f.write(text), "w")])
    return {"json": json_path, "csv": csv_path}
