"""Run folders: start or resume a training run, the loop with its callbacks, load the result.

A run folder holds ``config.yaml``, ``checkpoint.pt`` (and ``checkpoints/`` with
``keep_checkpoints``), ``progress.csv`` and TensorBoard events. :func:`train` starts a run in a
new folder and :func:`resume` continues one; both lock the folder for the whole call
(:func:`maml_rl.files.lock_run_folder`: a second training into it raises
:class:`~maml_rl.errors.RunFolderBusy`), remove temporaries a kill left behind, and hand a
:class:`~maml_rl.trainer.MAMLTrainer` to :func:`run_loop`, a short loop in the manner of
stable-baselines3's ``learn``: one :meth:`~maml_rl.trainer.MAMLTrainer.advance` per iteration,
everything else in callbacks (:class:`LogCallback`, :class:`ProgressBarCallback`,
:class:`CheckpointCallback`, and the caller's own).

Checkpoints are written atomically every ``checkpoint_every`` iterations, at the end, on Ctrl-C
or SIGTERM and on errors (the last completed iteration; the exception is re-raised). A folder
the call created is removed again when the run stops before completing its first iteration.
"""

from __future__ import annotations

import itertools
import math
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from maml_rl.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    load_policy_state,
    resolve_checkpoint,
    save_checkpoint,
)
from maml_rl.clipped_meta import ClippedResult
from maml_rl.config import TrainConfig, from_dict
from maml_rl.family import TaskFamily
from maml_rl.files import LOCK_NAME, atomic_write_text, lock_run_folder, remove_stale_temporaries
from maml_rl.logger import ITERATION_KEY, log_config, make_logger, truncate_progress
from maml_rl.meta_sgd import learned_step_sizes
from maml_rl.policy import MLPPolicy
from maml_rl.settings import PolicySettings
from maml_rl.trainer import IterationResult, MAMLTrainer, make_policy, meta_sgd_init

CONFIG_NAME = "config.yaml"
RESUMABLE_KEYS = frozenset(
    {
        "num_iterations",
        "checkpoint_every",
        "keep_checkpoints",
        "progress_bar",
        "device",
        "num_threads",
        "torch_threads",
        # the sampling back-end gives the same batches, so a run may move on or off a cluster
        "sampler",
        "ray_address",
        "num_workers",
        "ray_max_retries",
        "ray_timeout_s",
    }
)
"""The keys :func:`resume` may change."""


# -- callbacks ----------------------------------------------------------------------------------
class TrainingCallback:
    """Hooks of :func:`run_loop`; override what you need.

    ``on_iteration`` runs after every completed iteration (``trainer.iteration`` counts it);
    ``on_stop`` runs once at the end, with the exception that stopped the run or None.
    """

    def on_iteration(self, trainer: MAMLTrainer, result: IterationResult) -> None:
        pass

    def on_stop(self, trainer: MAMLTrainer, error: BaseException | None) -> None:
        pass


IterationFunction = Callable[[MAMLTrainer, IterationResult], None]


class _Function(TrainingCallback):
    def __init__(self, function: IterationFunction) -> None:
        self.function = function

    def on_iteration(self, trainer: MAMLTrainer, result: IterationResult) -> None:
        self.function(trainer, result)


class LogCallback(TrainingCallback):
    """One row per iteration: stdout table, ``progress.csv`` and TensorBoard."""

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def on_iteration(self, trainer: MAMLTrainer, result: IterationResult) -> None:
        log_iteration(self.logger, trainer, result)

    def on_stop(self, trainer: MAMLTrainer, error: BaseException | None) -> None:
        self.logger.close()


class ProgressBarCallback(TrainingCallback):
    """A tqdm bar over the iterations with the latest pre-/post-adaptation returns."""

    def __init__(self, total: int, initial: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc="meta-iter", dynamic_ncols=True)

    def on_iteration(self, trainer: MAMLTrainer, result: IterationResult) -> None:
        self.bar.set_postfix(
            pre=f"{result.pre_returns.mean():.1f}",
            post=f"{result.post_returns.mean():.1f}",
            refresh=False,
        )
        self.bar.update(1)

    def on_stop(self, trainer: MAMLTrainer, error: BaseException | None) -> None:
        self.bar.close()


class CheckpointCallback(TrainingCallback):
    """``checkpoint.pt`` every ``every`` iterations (and a kept copy with ``keep``), at the end,
    and when the run stops early (see :func:`save_on_stop`)."""

    def __init__(self, run_dir: Path, every: int, keep: bool, fresh: bool) -> None:
        self.run_dir = run_dir
        self.path = run_dir / CHECKPOINT_NAME
        self.every = every
        self.keep = keep
        self.fresh = fresh  # a run this call started: nothing to keep before its first iteration

    def on_iteration(self, trainer: MAMLTrainer, result: IterationResult) -> None:
        if trainer.iteration % self.every == 0:
            state = trainer.state_dict()
            save_checkpoint(self.path, state)
            if self.keep:
                name = f"iteration_{trainer.iteration:05d}.pt"
                save_checkpoint(self.run_dir / "checkpoints" / name, state)

    def on_stop(self, trainer: MAMLTrainer, error: BaseException | None) -> None:
        if error is None:
            save_checkpoint(self.path, trainer.state_dict())
        else:
            save_on_stop(self.path, trainer, error, fresh=self.fresh and trainer.iteration == 0)


def log_iteration(logger: Any, trainer: MAMLTrainer, it: IterationResult) -> None:
    """Record and dump one iteration's numbers (``rollout/``, ``train/``, ``time/`` keys)."""
    r = it.trpo
    logger.record(ITERATION_KEY, trainer.iteration)
    logger.record("rollout/pre_return_mean", float(it.pre_returns.mean()))
    logger.record("rollout/pre_return_std", float(it.pre_returns.std()))
    logger.record("rollout/post_return_mean", float(it.post_returns.mean()))
    logger.record("rollout/post_return_std", float(it.post_returns.std()))
    logger.record("train/surrogate_before", r.loss_before)
    logger.record("train/surrogate_after", r.loss_after)
    logger.record("train/kl", r.kl)
    if isinstance(r, ClippedResult):  # maml-ppo, promp
        logger.record("train/clip_fraction", r.clip_fraction)
        logger.record("train/inner_kl", r.inner_kl)
        logger.record("train/inner_kl_coef", r.inner_kl_coef)
        logger.record("train/outer_steps", r.outer_steps)
    else:
        logger.record("train/step_fraction", r.step_fraction)
        logger.record("train/line_search_steps", r.line_search_steps)
        logger.record("train/cg_residual", r.cg_residual)
    learned = learned_step_sizes(trainer.policy)
    if learned is not None:  # Meta-SGD
        for name, value in learned.summary().items():
            logger.record(f"train/inner_lr_{name}", value)
    logger.record("train/step_accepted", int(r.accepted))
    if not r.accepted:
        logger.record("train/rejected_reason", r.reason, exclude=("csv",))
    logger.record("time/env_steps", trainer.env_steps)
    for name in ("sampling", "advantages", "adaptation", "meta_step"):
        logger.record(f"time/{name}_s", it.timings.get(name, 0.0))
    for name, seconds in r.seconds.items():
        logger.record(f"time/meta_step_{name}_s", seconds)
    logger.record("time/iteration_s", it.iteration_s)
    logger.dump(trainer.iteration)


def save_on_stop(ckpt: Path, trainer: MAMLTrainer, err: BaseException, fresh: bool) -> None:
    """Save the last completed iteration when a run stops early and say so on stderr; a failure
    to save (full or read-only disk) is reported without hiding ``err``."""
    what = "interrupted" if isinstance(err, KeyboardInterrupt) else "stopped by an error"
    if fresh:
        print(f"\n{what} before the first iteration completed: nothing to keep", file=sys.stderr)
        return
    try:
        save_checkpoint(ckpt, trainer.state_dict())
    except OSError as save_err:
        print(
            f"\n{what}; the checkpoint of iteration {trainer.iteration} could not be saved: "
            f"{save_err} (the last periodic checkpoint in {ckpt.parent} stays)",
            file=sys.stderr,
        )
        return
    print(
        f"\n{what}: checkpoint of iteration {trainer.iteration} saved in {ckpt.parent}",
        file=sys.stderr,
    )


# -- the loop -----------------------------------------------------------------------------------
def run_loop(
    trainer: MAMLTrainer, num_iterations: int, callbacks: Sequence[TrainingCallback]
) -> None:
    """Advance ``trainer`` to ``num_iterations`` completed iterations, calling ``callbacks``
    in order; a non-finite post-adaptation return stops the run (``FloatingPointError``)."""
    error: BaseException | None = None
    try:
        while trainer.iteration < num_iterations:
            result = trainer.advance()
            for callback in callbacks:
                callback.on_iteration(trainer, result)
            if not math.isfinite(float(result.post_returns.mean())):
                raise FloatingPointError("post-adaptation return is not finite")
    except BaseException as err:
        error = err
        raise
    finally:
        for callback in callbacks:
            callback.on_stop(trainer, error)


def _sigterm_as_interrupt() -> Any:
    """Make SIGTERM (a scheduler's stop) raise KeyboardInterrupt, so the run checkpoints as on
    Ctrl-C; returns the previous handler (None when not in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, handler)


# -- start and resume ---------------------------------------------------------------------------
Callbacks = Sequence[TrainingCallback | IterationFunction]


def default_run_name(config: TrainConfig) -> str:
    env = config.env_id.split(":")[-1].replace("/", "-")
    return f"{env}__{config.config_name}__{config.seed}__{datetime.now():%Y%m%d-%H%M%S}"


def train(
    config: TrainConfig,
    run_dir: str | Path | None = None,
    stdout: bool = True,
    callbacks: Callbacks = (),
) -> Path:
    """Start a run of ``config`` in ``run_dir`` (default ``log_dir/<generated name>``); returns
    the run folder. ``callbacks`` (:class:`TrainingCallback` objects or functions called as
    ``f(trainer, result)`` after every iteration) run after the logging ones."""
    if run_dir:
        run_dir = Path(run_dir)
    elif config.run_name:
        run_dir = Path(config.log_dir) / config.run_name
    else:  # a generated name is never an existing folder (two runs started in one second)
        name = default_run_name(config)
        run_dir = Path(config.log_dir) / name
        for i in itertools.count(2):
            if not run_dir.exists():
                break
            run_dir = Path(config.log_dir) / f"{name}-{i}"

    def start() -> tuple[MAMLTrainer, bool]:
        if (run_dir / CHECKPOINT_NAME).exists():
            raise FileExistsError(f"{run_dir} already holds a run; use --resume {run_dir}")
        trainer = MAMLTrainer(config)
        atomic_write_text(run_dir / CONFIG_NAME, yaml.safe_dump(config.to_dict(), sort_keys=True))
        return trainer, False

    return _in_locked_folder(run_dir, start, stdout, callbacks)


def resume(
    run_dir: str | Path,
    overrides: dict[str, Any] | None = None,
    stdout: bool = True,
    callbacks: Callbacks = (),
) -> Path:
    """Continue the run in ``run_dir`` from its checkpoint; ``overrides`` may change only
    :data:`RESUMABLE_KEYS` (e.g. ``{"num_iterations": 1000}``). Returns the run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run folder at {run_dir}")

    def restart() -> tuple[MAMLTrainer, bool]:
        state = load_checkpoint(run_dir / CHECKPOINT_NAME)
        changes = dict(overrides or {})
        fixed = sorted(set(changes) - RESUMABLE_KEYS)
        if fixed:
            raise ValueError(f"cannot change {fixed} when resuming; only {sorted(RESUMABLE_KEYS)}")
        trainer = MAMLTrainer(from_dict(changes, from_dict(state["config"])).validate())
        try:
            trainer.load_state_dict(state, run_dir / CHECKPOINT_NAME)
        except BaseException:
            trainer.close()
            raise
        kept = truncate_progress(run_dir, trainer.iteration)
        if kept < trainer.iteration:
            print(
                f"warning: {run_dir / 'progress.csv'} holds {kept} of the {trainer.iteration} "
                "completed iterations; the training continues, later rows are appended",
                file=sys.stderr,
            )
        return trainer, True

    return _in_locked_folder(run_dir, restart, stdout, callbacks)


def _in_locked_folder(
    run_dir: Path,
    make_trainer: Callable[[], tuple[MAMLTrainer, bool]],
    stdout: bool,
    callbacks: Callbacks,
) -> Path:
    """Lock ``run_dir``, build the trainer (``make_trainer`` returns it and whether the run is
    resumed) and run the loop; callbacks in order: the log, the caller's, the progress bar,
    the checkpoints."""
    created = not run_dir.exists()
    try:
        with lock_run_folder(run_dir):
            remove_stale_temporaries(run_dir)
            trainer, resumed = make_trainer()
            config = trainer.config
            previous_sigterm = _sigterm_as_interrupt()
            try:
                logger = make_logger(
                    run_dir, stdout=stdout, resume=resumed, progress_bar=config.progress_bar
                )
                if not resumed:
                    log_config(logger, config.to_dict())
                progress = (
                    [ProgressBarCallback(config.num_iterations, trainer.iteration)]
                    if config.progress_bar
                    else []
                )
                run_loop(
                    trainer,
                    config.num_iterations,
                    [
                        LogCallback(logger),
                        *(
                            c if isinstance(c, TrainingCallback) else _Function(c)
                            for c in callbacks
                        ),
                        *progress,
                        CheckpointCallback(
                            run_dir, config.checkpoint_every, config.keep_checkpoints, created
                        ),
                    ],
                )
            finally:
                if previous_sigterm is not None:
                    signal.signal(signal.SIGTERM, previous_sigterm)
                trainer.close()
            return run_dir
    finally:
        if created:
            remove_unused_run_folder(run_dir)


_RUN_FILES = ("checkpoint.pt", CONFIG_NAME, "progress.csv", "events.out.tfevents.*")


def remove_unused_run_folder(run_dir: Path) -> None:
    """Delete a run folder that holds no completed iteration: only this package's own files
    (lock, config, empty log, iteration-0 checkpoint); anything else keeps the folder."""
    if not run_dir.is_dir():
        return
    if (run_dir / CHECKPOINT_NAME).is_file() and _iteration_of(run_dir) > 0:
        return
    ours = [p for pattern in _RUN_FILES for p in run_dir.glob(pattern)]
    others = set(run_dir.iterdir()) - set(ours) - {run_dir / LOCK_NAME}
    if others:
        return
    for path in [*ours, run_dir / LOCK_NAME]:
        path.unlink(missing_ok=True)
    run_dir.rmdir()


def _iteration_of(run_dir: Path) -> int:
    try:
        return int(load_checkpoint(run_dir)["iteration"])
    except Exception:
        return 1  # unreadable: not ours to delete


# -- results ------------------------------------------------------------------------------------
def load_policy(path: str | Path) -> tuple[MLPPolicy, TrainConfig]:
    """The trained policy and config of a run folder or checkpoint file."""
    state = load_checkpoint(path)
    config = from_dict(state["config"]).validate()
    family = TaskFamily.from_config(config)
    policy = make_policy(family, config.part(PolicySettings), meta_sgd_init(config))
    try:
        load_policy_state(policy, state["policy"], resolve_checkpoint(path))
    finally:
        family.close()
    return policy, config


__all__: Sequence[str] = ["TrainingCallback", "load_policy", "resume", "run_loop", "train"]
