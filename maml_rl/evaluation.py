"""Meta-test evaluation: the protocol of the authors' test scripts (Finn et al. 2017, section 5.3).

For N test tasks drawn with a fixed seed (never one of training's), a policy is adapted with
``num_steps`` policy-gradient steps, each on fresh rollouts of the latest adapted policy:

    theta_0 = theta,   theta_{j+1,i} = theta_{j,i} - alpha_j * grad L_i(theta_{j,i}),
    alpha_0 = alpha,   alpha_j = alpha / 2 for j >= 1,

and the mean undiscounted return of each task's K = ceil(env_steps / H) rollouts is recorded
after 0, 1, ..., ``num_steps`` steps (K = 40 for navigation, H = 100; K = 20 for locomotion,
H = 200, with the default 4000 env steps per step). The report is the mean over tasks and its
standard error std / sqrt(N) per step. All tasks adapt at once: one sampler call per step.

Meta-World+'s protocol (McLean et al. 2025: adapt on 10 episodes, evaluate on 3) measures on
separate rollouts instead: with ``EvalSettings.eval_episodes = E`` the K rollouts of each step
are only adapted on, and E fresh rollouts per task with the same parameters (their own seeds,
:func:`evaluation_seed`) give that step's returns and success rates.

Every method's family is resolved once (:attr:`Method.family`) and handed down.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maml_rl.batch import EpisodeBatch, episode_success
from maml_rl.checkpoint import load_checkpoint, resolve_checkpoint
from maml_rl.config import TrainConfig
from maml_rl.errors import RunFolderBusy
from maml_rl.family import TaskFamily
from maml_rl.files import (
    LOCK_NAME,
    atomic_path,
    check_output_folder,
    lock_run_folder,
    remove_stale_output_temporaries,
)
from maml_rl.inner_loop import cpu_policy, fine_tune, step_sizes
from maml_rl.labels import DEFAULT_LABELS, maml_variant_label
from maml_rl.meta_sgd import InnerStepSizes
from maml_rl.policy import MLPPolicy, Params
from maml_rl.report import (
    RESULT_FILES,
    EvalSettings,
    EvaluationReport,
    MethodResult,
    format_table,
    write_report,
)
from maml_rl.run import policy_from_state
from maml_rl.sampler import make_sampler
from maml_rl.seeding import TEST_STREAM, derive_seed
from maml_rl.settings import AdvantageSettings, PolicySettings, SamplerSettings
from maml_rl.trainer import make_policy


def episodes_per_task(env_steps: int, horizon: int) -> int:
    """K = ceil(env_steps / H) rollouts per task and step."""
    return max(1, math.ceil(env_steps / horizon))


def sample_test_tasks(
    config: TrainConfig, num_tasks: int, seed: int, source: str = "seeded"
) -> list[Any]:
    """The N test tasks of a config's family (see :meth:`TaskFamily.test_tasks`)."""
    family = TaskFamily.from_config(config)
    return family.test_tasks(num_tasks, seed, source, config.seed)


def rollout_seed(seed: int, step: int) -> int:
    """The seed of the evaluation rollouts after ``step`` gradient steps."""
    return derive_seed(seed, TEST_STREAM, 1 + step)


def evaluation_seed(seed: int, step: int) -> int:
    """The seed of the separate measurement rollouts after ``step`` steps (``eval_episodes``):
    a stream of its own, never one of the rollouts adapted on."""
    return derive_seed(seed, TEST_STREAM, 1 + step, 1)


def adapt_and_evaluate(
    policy: MLPPolicy,
    config: TrainConfig,
    tasks: Sequence[Any],
    settings: EvalSettings,
    keep: bool = False,
    family: TaskFamily | None = None,
    learned: InnerStepSizes | None = None,
) -> tuple[np.ndarray, list[float], list[tuple[np.ndarray, np.ndarray]], list[Params]]:
    """Returns ``[num_steps + 1, N]`` after 0..num_steps test-time gradient steps (see
    :func:`adapt_and_measure`, which also gives the success rates)."""
    returns, _, schedule, rollouts, params = adapt_and_measure(
        policy, config, tasks, settings, keep, family, learned
    )
    return returns, schedule, rollouts, params


def adapt_and_measure(
    policy: MLPPolicy,
    config: TrainConfig,
    tasks: Sequence[Any],
    settings: EvalSettings,
    keep: bool = False,
    family: TaskFamily | None = None,
    learned: InnerStepSizes | None = None,
) -> tuple[
    np.ndarray, np.ndarray | None, list[float], list[tuple[np.ndarray, np.ndarray]], list[Params]
]:
    """Returns ``[num_steps + 1, N]`` after 0..num_steps test-time gradient steps, and, when
    the env reports ``info["success"]`` (Meta-World), the fraction of each task's rollouts
    that succeeded at some step, ``[num_steps + 1, N]`` (else None).

    Each step samples K rollouts per task with the current (per-task) parameters, computes
    advantages as in training (the config's gamma, GAE lambda, normalisation, linear baseline)
    and takes one policy-gradient step with the schedule of :func:`step_sizes` (with Meta-SGD's
    ``learned`` step sizes: them times schedule_j / inner_lr). The numbers are those K
    rollouts' or, with ``settings.eval_episodes``, those of E separate rollouts per task and
    step (:func:`measure_rollouts`). With ``keep`` also returns the measured rollouts'
    observations and masks and the parameters of every step. ``family``: the config's, when
    the caller has resolved it.
    """
    if family is None:
        family = TaskFamily.from_config(config)
    k = episodes_per_task(settings.env_steps, family.horizon)
    alpha = settings.alpha if settings.alpha is not None else config.inner_lr
    schedule = step_sizes(alpha, settings.num_steps)
    run = fine_tune(
        policy,
        family,
        tasks,
        schedule,
        k,
        [rollout_seed(settings.seed, j) for j in range(settings.num_steps + 1)],
        config.part(AdvantageSettings),
        config.inner_objective,
        lambda j: f"evaluation, step {j + 1} batch",
        config.inner_lr,
        config.part(SamplerSettings),
        learned,
        sample_last=settings.eval_episodes is None,  # else the adapted policy is measured apart
    )
    batches = run.batches
    if settings.eval_episodes is not None:
        sampling = config.part(SamplerSettings)
        batches = measure_rollouts(policy, family, tasks, run.params, settings, sampling)
    returns = [b.episode_returns.double().mean(dim=1).numpy() for b in batches]
    flags = [episode_success(b) for b in batches]
    success = (
        None
        if any(f is None for f in flags)
        else np.stack([f.double().mean(dim=1).numpy() for f in flags])
    )
    if not keep:
        return np.stack(returns), success, schedule, [], []
    rollouts = [(b.observations.numpy(), b.mask.numpy()) for b in batches]
    return np.stack(returns), success, schedule, rollouts, run.params


def measure_rollouts(
    policy: MLPPolicy,
    family: TaskFamily,
    tasks: Sequence[Any],
    params: Sequence[Params],
    settings: EvalSettings,
    sampling: SamplerSettings | None = None,
) -> list[EpisodeBatch]:
    """``settings.eval_episodes`` fresh rollouts per task with each step's parameters
    ``params[j]`` (seeds :func:`evaluation_seed`), on the CPU, sampled by the back-end
    ``sampling`` names (default this process): the measured rollouts of Meta-World+'s
    protocol, none of them adapted on."""
    assert settings.eval_episodes is not None
    sampler = make_sampler(family, cpu_policy(policy), sampling or SamplerSettings())
    try:
        return [
            sampler.sample(tasks, p, settings.eval_episodes, evaluation_seed(settings.seed, j))
            for j, p in enumerate(params)
        ]
    finally:
        sampler.close()


def random_policy(config: TrainConfig, family: TaskFamily | None = None) -> MLPPolicy:
    """An untrained policy: the initialisation a run with this config starts from
    (``family``: the config's, when the caller has resolved it)."""
    if family is None:
        family = TaskFamily.from_config(config)
    torch.manual_seed(config.seed)
    return make_policy(family, config.part(PolicySettings))


@dataclass
class Method:
    """Something to evaluate: a policy to fine-tune, or an oracle evaluated as is."""

    label: str
    kind: str
    """``maml``, ``pretrained``, ``random`` or ``oracle``."""
    source: str
    config: TrainConfig
    policy: MLPPolicy | None = None
    oracle: Any = None
    """A stable-baselines3 model taking observation + task parameters."""
    deterministic: bool = False
    """Oracle only: act with the mean action instead of sampling."""
    iteration: int | None = None
    """The training iteration of the evaluated checkpoint (None: untrained or an oracle)."""
    step_sizes: InnerStepSizes | None = None
    """A Meta-SGD run's learned inner step sizes, loaded beside ``policy`` (None: ``inner_lr``)."""

    @cached_property
    def family(self) -> TaskFamily:
        """The task family of the method's config, resolved once (methods of one evaluation
        may differ in, e.g., ``normalize_actions``)."""
        return TaskFamily.from_config(self.config)


def load_method(path: str | Path, label: str | None = None) -> Method:
    """A run folder or checkpoint: MAML or pretrained policy, or an oracle run folder."""
    from maml_rl.comparisons import load_oracle, run_kind

    path = Path(path)
    kind = run_kind(path)
    if kind == "oracle":
        model, config = load_oracle(path)
        return Method(label or DEFAULT_LABELS[kind], kind, str(path), config, oracle=model)
    state = load_checkpoint(path)  # read once: the policy and the iteration it reached
    meta, config = policy_from_state(state, resolve_checkpoint(path))
    iteration = int(state["iteration"])
    default = maml_variant_label(config) if kind == "maml" else DEFAULT_LABELS[kind]
    return Method(
        label or default,
        kind,
        str(path),
        config,
        policy=meta.policy,
        iteration=iteration,
        step_sizes=meta.step_sizes,
    )


def evaluate_method(
    method: Method, tasks: Sequence[Any], settings: EvalSettings, keep: bool = False
) -> MethodResult:
    """Run the protocol for one method on the given test tasks."""
    if method.kind == "oracle":
        from maml_rl.comparisons import evaluate_oracle

        family = method.family
        measured = settings.eval_episodes is not None
        returns = evaluate_oracle(
            method.oracle,
            family,
            tasks,
            settings.eval_episodes or episodes_per_task(settings.env_steps, family.horizon),
            (evaluation_seed if measured else rollout_seed)(settings.seed, 0),
            method.deterministic,
            method.config.num_threads,
        )
        return MethodResult(method.label, method.kind, method.source, returns[None, :])
    assert method.policy is not None
    returns, success, schedule, rollouts, history = adapt_and_measure(
        method.policy,
        method.config,
        tasks,
        settings,
        keep,
        family=method.family,
        learned=method.step_sizes,
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
        iteration=method.iteration,
        success=success,
    )


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
    ``returns.png`` (return vs gradient steps), ``success.png`` for families that report
    success (Meta-World), ``trajectories.png`` for families whose env declares
    ``trajectory_plot`` (2D navigation) and, with ``video``, rollout videos of the first
    adaptable method (families that render ``rgb_array``).
    Before any evaluation work the folder is checked (a folder or creatable, writable) and
    locked for the evaluation (:func:`~maml_rl.files.lock_run_folder`: a second evaluation into
    it is refused at once); ``returns.csv`` and ``returns.json`` are published together
    (:func:`~maml_rl.report.write_report`), each plot atomically, so a failure or kill leaves the
    earlier files intact and no partial one.
    """
    if not methods:
        raise ValueError("nothing to evaluate")
    settings = (settings or EvalSettings()).validate()
    family = methods[0].family
    for m in methods[1:]:
        other = m.family
        if (other.env_id, other.env_kwargs, other.horizon) != (
            family.env_id,
            family.env_kwargs,
            family.horizon,
        ):
            raise ValueError(
                f"{m.source} is a run of {other.env_id} {other.env_kwargs} (H={other.horizon}), "
                f"not of {family.env_id} {family.env_kwargs} (H={family.horizon}) like "
                f"{methods[0].source}"
            )
    stack = ExitStack()  # the output folder's lock, held until the results are written
    try:
        out = None if output_dir is None else _claim_output(Path(output_dir), stack)
        return _evaluate(methods, settings, family, out, plots, video, video_tasks, stdout)
    finally:
        stack.close()


OUTPUT_FILES = (*RESULT_FILES, "*.png")
"""The files an evaluation writes into its output folder (videos go to ``videos/``)."""


def _claim_output(out: Path, stack: ExitStack) -> Path:
    """Before any evaluation work: check that ``out`` is (or can be made) a writable folder,
    take its lock for the rest of the evaluation (a second evaluation into it gets
    :class:`~maml_rl.errors.RunFolderBusy` at once) and remove temporaries a killed one left."""
    check_output_folder(out)
    try:
        stack.enter_context(lock_run_folder(out))
    except RunFolderBusy:
        try:
            holder = (out / LOCK_NAME).read_text().strip() or "another process"
        except OSError:
            holder = "another process"
        raise RunFolderBusy(
            f"output folder {out} is in use by {holder} (another evaluation writing its results "
            "there?); wait for it to end, or pass another --output"
        ) from None
    remove_stale_output_temporaries(out, OUTPUT_FILES)
    return out


def _evaluate(
    methods: Sequence[Method],
    settings: EvalSettings,
    family: TaskFamily,
    out: Path | None,
    plots: bool,
    video: bool,
    video_tasks: int,
    stdout: bool,
) -> EvaluationReport:
    env_id, horizon = family.env_id, family.horizon
    # a benchmark's held-out tasks (Meta-World) are those of the benchmark the run trained on
    tasks = family.test_tasks(
        settings.num_tasks, settings.seed, settings.test_tasks, methods[0].config.seed
    )
    paths = family.plots_paths
    results = [
        evaluate_method(m, tasks, settings, keep=(plots and paths) or video) for m in methods
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
    if out is not None:
        report.files.update(write_report(report, out))
        if plots:
            from maml_rl.plots import plot_returns, plot_success, plot_trajectories

            with atomic_path(out / "returns.png") as tmp:
                plot_returns(report, tmp)
            report.files["returns_png"] = out / "returns.png"
            if any(r.success is not None for r in results):
                with atomic_path(out / "success.png") as tmp:
                    plot_success(report, tmp)
                report.files["success_png"] = out / "success.png"
            adaptable = [r for r in results if r.rollouts]
            if paths:
                for n, r in enumerate(adaptable):
                    name = "trajectories.png" if n == 0 else f"trajectories_{_slug(r.label)}.png"
                    with atomic_path(out / name) as tmp:
                        plot_trajectories(report, r, tmp)
                    report.files[name] = out / name
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
            written, message = write_videos(report, result, method.family, out, num_tasks)
            print(message)
            return {f"video_{p.stem}": p for p in written}
    print("video: skipped, no method that adapts (an oracle alone has nothing to show)")
    return {}
