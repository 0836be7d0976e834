"""Meta-test evaluation: the protocol of the authors' test scripts (Finn et al. 2017, section 5.3).

For N test tasks drawn with a fixed seed (never one of training's), a policy is adapted with
``num_steps`` policy-gradient steps, each on fresh rollouts of the latest adapted policy:

    theta_0 = theta,   theta_{j+1,i} = theta_{j,i} - alpha_j * grad L_i(theta_{j,i}),
    alpha_0 = alpha,   alpha_j = alpha / 2 for j >= 1,

and the mean undiscounted return of each task's K = ceil(env_steps / H) rollouts is recorded
after 0, 1, ..., ``num_steps`` steps (K = 40 for navigation, H = 100; K = 20 for locomotion,
H = 200, with the default 4000 env steps per step). The report is the mean over tasks and its
standard error std / sqrt(N) per step. All tasks adapt at once: one sampler call per step.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from maml_rl.adaptation import adapt
from maml_rl.advantages import checked_advantages
from maml_rl.authors_tasks import authors_test_tasks
from maml_rl.batch import loss_inputs
from maml_rl.config import TrainConfig
from maml_rl.policy import GaussianMLPPolicy, Params
from maml_rl.sampler import VectorSampler, make_family_env
from maml_rl.trainer import derive_seed, load_policy, make_policy, prepare_env

TEST_TASK_SOURCES = ("seeded", "authors")

TEST_STREAM = 2**31 - 1
"""Mixed into the test seeds: ``derive_seed(seed, TEST_STREAM)`` for the test tasks and
``derive_seed(seed, TEST_STREAM, 1 + j)`` for the rollouts of step j. Training draws its tasks
from ``derive_seed(seed, iteration, 0)`` with iterations far below this, so the streams differ."""


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

    def validate(self) -> EvalSettings:
        for key in ("num_tasks", "env_steps"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
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


def step_sizes(alpha: float, num_steps: int) -> list[float]:
    """The test-time schedule ``[alpha, alpha/2, alpha/2, ...]`` of length ``num_steps``."""
    return [alpha if j == 0 else alpha / 2.0 for j in range(num_steps)]


def horizon_of(config: TrainConfig) -> int:
    """H: the config's ``max_episode_steps`` or the id's registered one."""
    env_id = prepare_env(config)
    horizon = config.max_episode_steps or gym.spec(env_id).max_episode_steps
    if not horizon:
        raise ValueError(f"{env_id} has no max_episode_steps; set max_episode_steps")
    return int(horizon)


def episodes_per_task(env_steps: int, horizon: int) -> int:
    """K = ceil(env_steps / H) rollouts per task and step."""
    return max(1, math.ceil(env_steps / horizon))


def sample_test_tasks(
    config: TrainConfig, num_tasks: int, seed: int, source: str = "seeded"
) -> list[Any]:
    """The N test tasks of a family: drawn with the test seed (``seeded``, the same on every
    call) or the authors' fixed ones (``authors``), validated by the family's task space."""
    env_id = prepare_env(config)
    env = make_family_env(env_id, config.env_kwargs)
    try:
        if source == "authors":
            space = env.unwrapped.task_space
            return [space.validate(task) for task in authors_test_tasks(env_id, num_tasks)]
        rng = np.random.default_rng(derive_seed(seed, TEST_STREAM))
        return list(env.unwrapped.sample_tasks(num_tasks, rng))
    finally:
        env.close()


def _rollout_seed(seed: int, step: int) -> int:
    return derive_seed(seed, TEST_STREAM, 1 + step)


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
    policy: GaussianMLPPolicy | None = field(default=None, repr=False)
    params: list[Params] = field(default_factory=list, repr=False)
    """Per step j: the parameters the rollouts of step j were sampled with (when kept)."""

    @property
    def mean(self) -> np.ndarray:
        return self.returns.mean(axis=1)

    @property
    def stderr(self) -> np.ndarray:
        n = self.returns.shape[1]
        if n < 2:
            return np.zeros(self.returns.shape[0])
        return self.returns.std(axis=1, ddof=1) / math.sqrt(n)


def adapt_and_evaluate(
    policy: GaussianMLPPolicy,
    config: TrainConfig,
    tasks: Sequence[Any],
    settings: EvalSettings,
    keep: bool = False,
) -> tuple[np.ndarray, list[float], list[tuple[np.ndarray, np.ndarray]], list[Params]]:
    """Returns ``[num_steps + 1, N]`` after 0..num_steps test-time gradient steps.

    Each step samples K rollouts per task with the current (per-task) parameters, computes
    advantages as in training (the config's gamma, GAE lambda, normalisation, linear baseline)
    and takes one policy-gradient step with the schedule of :func:`step_sizes`. With ``keep``
    also returns the rollouts' observations and masks and the parameters of every step.
    """
    env_id = prepare_env(config)
    horizon = horizon_of(config)
    k = episodes_per_task(settings.env_steps, horizon)
    alpha = settings.alpha if settings.alpha is not None else config.inner_lr
    schedule = step_sizes(alpha, settings.num_steps)
    policy = policy.cpu()
    sampler = VectorSampler.from_config(env_id, policy, config)
    params: Params = {name: p.detach() for name, p in policy.params().items()}
    returns, rollouts, history = [], [], []
    try:
        for j in range(settings.num_steps + 1):
            batch = sampler.sample(tasks, params, k, _rollout_seed(settings.seed, j))
            returns.append(batch.episode_returns.double().mean(dim=1).numpy())
            if keep:
                rollouts.append((batch.observations.numpy(), batch.mask.numpy()))
                history.append(params)
            if j == settings.num_steps:
                break
            adv = checked_advantages(
                batch,
                config.gamma,
                config.gae_lambda,
                config.normalize_advantages,
                f"evaluation, step {j + 1} batch",
            )
            leaf = {name: p.detach().requires_grad_(True) for name, p in params.items()}
            new = adapt(
                policy,
                leaf,
                [loss_inputs(batch, adv)],
                [schedule[j]],
                config.inner_objective,
                create_graph=False,
            )
            params = {name: p.detach() for name, p in new.items()}
    finally:
        sampler.close()
    return np.stack(returns), schedule, rollouts, history


def random_policy(config: TrainConfig) -> GaussianMLPPolicy:
    """An untrained policy: the initialisation a run with this config starts from."""
    env = make_family_env(prepare_env(config), config.env_kwargs)
    try:
        torch.manual_seed(config.seed)
        return make_policy(env, config)
    finally:
        env.close()


@dataclass
class Method:
    """Something to evaluate: a policy to fine-tune, or an oracle evaluated as is."""

    label: str
    kind: str
    """``maml``, ``pretrained``, ``random`` or ``oracle``."""
    source: str
    config: TrainConfig
    policy: GaussianMLPPolicy | None = None
    oracle: Any = None
    """A stable-baselines3 model taking observation + task parameters."""
    deterministic: bool = False
    """Oracle only: act with the mean action instead of sampling."""


DEFAULT_LABELS = {
    "maml": "MAML",
    "pretrained": "pretrained",
    "random": "random init",
    "oracle": "oracle",
}


def load_method(path: str | Path, label: str | None = None) -> Method:
    """A run folder or checkpoint: MAML or pretrained policy, or an oracle run folder."""
    from maml_rl.baselines import load_oracle, run_kind

    path = Path(path)
    kind = run_kind(path)
    if kind == "oracle":
        model, config = load_oracle(path)
        return Method(label or DEFAULT_LABELS[kind], kind, str(path), config, oracle=model)
    policy, config = load_policy(path)
    return Method(label or DEFAULT_LABELS[kind], kind, str(path), config, policy=policy)


def evaluate_method(
    method: Method, tasks: Sequence[Any], settings: EvalSettings, keep: bool = False
) -> MethodResult:
    """Run the protocol for one method on the given test tasks."""
    if method.kind == "oracle":
        from maml_rl.baselines import evaluate_oracle

        k = episodes_per_task(settings.env_steps, horizon_of(method.config))
        returns = evaluate_oracle(
            method.oracle,
            method.config,
            tasks,
            k,
            _rollout_seed(settings.seed, 0),
            method.deterministic,
        )
        return MethodResult(method.label, method.kind, method.source, returns[None, :])
    assert method.policy is not None
    returns, schedule, rollouts, history = adapt_and_evaluate(
        method.policy, method.config, tasks, settings, keep
    )
    return MethodResult(
        method.label,
        method.kind,
        method.source,
        returns,
        schedule,
        rollouts,
        method.policy,
        history,
    )


# -- reports -------------------------------------------------------------------------------
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
            "seed": s.seed,
            "test_tasks": s.test_tasks,
            "tasks": [np.asarray(t.as_array()).tolist() for t in self.tasks],
            "methods": [
                {
                    "label": r.label,
                    "kind": r.kind,
                    "source": r.source,
                    "step_sizes": r.step_sizes,
                    "mean": r.mean.tolist(),
                    "stderr": r.stderr.tolist(),
                    "returns": r.returns.tolist(),
                }
                for r in self.results
            ],
        }


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
    widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(
            cell.ljust(w) if c == 0 else cell.rjust(w)
            for c, (cell, w) in enumerate(zip(row, widths))
        )

    tasks = "the authors' " if report.settings.test_tasks == "authors" else ""
    title = (
        f"{report.env_id}: mean return ± s.e. over {tasks}{report.settings.num_tasks} test tasks "
        f"(seed {report.settings.seed}, {report.episodes_per_task} rollouts per task and step)"
    )
    return "\n".join([title, line(header), line(["-" * w for w in widths]), *map(line, rows)])


def write_report(report: EvaluationReport, output_dir: str | Path) -> dict[str, Path]:
    """Write ``returns.json`` and ``returns.csv`` (per task, per step, per method)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "returns.json"
    json_path.write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    csv_path = out / "returns.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["method", "kind", "step", "task_index", "task", "return"])
        for r in report.results:
            for j, row in enumerate(r.returns):
                for i, value in enumerate(row):
                    task = " ".join(f"{x:g}" for x in np.asarray(report.tasks[i].as_array()))
                    writer.writerow([r.label, r.kind, j, i, task, f"{value:.6f}"])
    return {"json": json_path, "csv": csv_path}


def evaluate(
    methods: Sequence[Method],
    settings: EvalSettings | None = None,
    output_dir: str | Path | None = None,
    plots: bool = True,
    video: bool = False,
    video_tasks: int = 2,
    stdout: bool = True,
) -> EvaluationReport:
    """Evaluate methods of one task family on the same test tasks; write files and plots.

    Writes into ``output_dir`` (when given): ``returns.json``, ``returns.csv``,
    ``returns.png`` (return vs gradient steps), ``trajectories.png`` for 2D navigation and,
    with ``video``, rollout videos of the first adaptable method (locomotion families).
    """
    if not methods:
        raise ValueError("nothing to evaluate")
    settings = (settings or EvalSettings()).validate()
    first = methods[0].config
    family = (prepare_env(first), first.env_kwargs, horizon_of(first))
    for m in methods[1:]:
        other = (prepare_env(m.config), m.config.env_kwargs, horizon_of(m.config))
        if other != family:
            raise ValueError(
                f"{m.source} is a run of {other[0]} {other[1]} (H={other[2]}), "
                f"not of {family[0]} {family[1]} (H={family[2]}) like {methods[0].source}"
            )
    env_id, _, horizon = family
    tasks = sample_test_tasks(first, settings.num_tasks, settings.seed, settings.test_tasks)
    is_navigation = env_id.startswith("MAML/Navigation2D")
    results = [
        evaluate_method(m, tasks, settings, keep=(plots and is_navigation) or video)
        for m in methods
    ]
    report = EvaluationReport(
        env_id,
        settings,
        horizon,
        episodes_per_task(settings.env_steps, horizon),
        tasks,
        results,
    )
    if stdout:
        print(format_table(report))
    if output_dir is not None:
        out = Path(output_dir)
        report.files.update(write_report(report, out))
        if plots:
            from maml_rl.plots import plot_returns, plot_trajectories

            report.files["returns_png"] = plot_returns(report, out / "returns.png")
            adaptable = [r for r in results if r.rollouts]
            if is_navigation:
                for n, r in enumerate(adaptable):
                    name = "trajectories.png" if n == 0 else f"trajectories_{_slug(r.label)}.png"
                    report.files[name] = plot_trajectories(report, r, out / name)
        if video:
            report.files.update(_videos(report, methods, out / "videos", video_tasks))
        if stdout:
            print(f"wrote {', '.join(str(p) for p in report.files.values())}")
    return report


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_") or "method"


def _videos(
    report: EvaluationReport, methods: Sequence[Method], out: Path, num_tasks: int
) -> dict[str, Path]:
    """Videos of the first method that adapts (printing why when none are written)."""
    from maml_rl.video import write_videos

    for method, result in zip(methods, report.results):
        if result.policy is not None:
            written, message = write_videos(report, result, method.config, out, num_tasks)
            print(message)
            return {f"video_{p.stem}": p for p in written}
    print("video: skipped, no method that adapts (an oracle alone has nothing to show)")
    return {}
