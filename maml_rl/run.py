"""Run folders: start or resume a training run, the loop with its callbacks, load the result.

A run folder holds ``config.yaml``, ``checkpoint.pt`` (and ``checkpoints/`` with
``keep_checkpoints``), ``progress.csv`` and TensorBoard events. :func:`train` starts a run in a
new folder and :func:`resume` continues one; both hold the folder for the whole call through
the one lifecycle of :func:`maml_rl.run_folders.locked_run_folder` (a fresh run's folder checked
first, a lock: a second training into it raises :class:`~maml_rl.errors.RunFolderBusy`,
temporaries a kill left behind removed), and hand a
:class:`~maml_rl.trainer.MAMLTrainer` to :func:`run_loop`, a short loop in the manner of
stable-baselines3's ``learn``: one :meth:`~maml_rl.trainer.MAMLTrainer.advance` per iteration,
everything else in callbacks (:class:`LogCallback`, :class:`ProgressBarCallback`,
:class:`CheckpointCallback`, and the caller's own).

Checkpoints are written atomically every ``checkpoint_every`` iterations, at the end, on errors
and on SIGTERM, SIGINT (Ctrl-C), SIGHUP and SIGQUIT (the last completed iteration; the exception
is re-raised). The checkpoint on a stop is written before anything else (logger, progress bar),
and a second signal during it is only recorded: it cannot cancel the checkpoint. A folder the
call created is removed again when the run stops before logging its first iteration; a folder
with logged iterations is never removed.

A new run's folder (:func:`maml_rl.run_folders.run_folder`, the one naming) stays inside
``log_dir``, and a fresh run never writes into a folder that holds anything but a run of ours
that logged no iteration.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml

from maml_rl.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    load_policy_state,
    resolve_checkpoint,
    save_checkpoint,
)
from maml_rl.config import TrainConfig, from_dict
from maml_rl.errors import ConfigError
from maml_rl.family import TaskFamily
from maml_rl.files import atomic_write_text, check_not_busy
from maml_rl.logger import (
    ITERATION_KEY,
    discard_stdout,
    log_config,
    make_logger,
    truncate_progress,
)
from maml_rl.meta_sgd import MetaPolicy
from maml_rl.run_folders import CONFIG_NAME, locked_run_folder, run_folder
from maml_rl.settings import RESUMABLE_KEYS
from maml_rl.trainer import IterationResult, MAMLTrainer, make_meta_policy


# -- callbacks ----------------------------------------------------------------------------------
class TrainingCallback:
    """Hooks of :func:`run_loop`; override what you need.

    ``on_iteration`` runs after every completed iteration (``trainer.iteration`` counts it),
    callbacks in order; ``on_stop`` runs once at the end, with the exception that stopped the run
    or None, callbacks in reverse order (the checkpoint first), while stop signals are deferred.
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
        with (
            STOP_SIGNALS.deferred()
        ):  # the row whole or not at all: the CSV agrees with the checkpoint
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
            with STOP_SIGNALS.deferred():
                save_checkpoint(self.path, state)
                if self.keep:
                    name = f"iteration_{trainer.iteration:05d}.pt"
                    save_checkpoint(self.run_dir / "checkpoints" / name, state)

    def on_stop(self, trainer: MAMLTrainer, error: BaseException | None) -> None:
        if error is None:
            save_checkpoint(self.path, trainer.state_dict())
        else:
            save_on_stop(self.path, trainer, error, fresh=self.fresh and trainer.iteration == 0)


class BusyMachineHint(TrainingCallback):
    """After the first iteration of a call, one line on stderr when other work competes for
    the cores while torch runs more than one intra-op thread: torch's workers then wait for
    each other at every operation, and ``torch_threads=1`` is often faster (docs/performance.md:
    a navigation meta-step beside one busy process on 2 cores, 1.4-1.9 s with 2 threads,
    0.7-0.9 s with 1). Busy means a 1-minute load average above the core count plus one: the
    run itself keeps about min(threads, cores) runnable, so the excess is someone else's. Only
    for a person at a terminal (stderr a TTY): logs and scripts get no hint."""

    def __init__(
        self,
        load: Callable[[], float] | None = None,
        cores: int | None = None,
        interactive: bool | None = None,
    ) -> None:
        self.load = load or (lambda: os.getloadavg()[0])
        self.cores = cores or os.cpu_count() or 1
        self.done = not (_stderr_is_a_terminal() if interactive is None else interactive)

    def on_iteration(self, trainer: MAMLTrainer, result: IterationResult) -> None:
        if self.done:
            return
        self.done = True
        threads = torch.get_num_threads()
        try:
            load = float(self.load())
        except OSError:  # no load average on this platform
            return
        if threads > 1 and load > self.cores + 1:
            _say(
                f"maml-rl: hint: the machine is busy (load {load:.1f} on {self.cores} cores) and "
                f"torch uses {threads} threads; on a shared machine --set torch_threads=1 is "
                f"often faster (iteration {trainer.iteration} took {result.iteration_s:.1f} s)"
            )


def log_iteration(logger: Any, trainer: MAMLTrainer, it: IterationResult) -> None:
    """Record and dump one iteration's numbers (``rollout/``, ``train/``, ``time/`` keys)."""
    r = it.meta_step
    logger.record(ITERATION_KEY, trainer.iteration)
    logger.record("rollout/pre_return_mean", float(it.pre_returns.mean()))
    logger.record("rollout/pre_return_std", float(it.pre_returns.std()))
    logger.record("rollout/post_return_mean", float(it.post_returns.mean()))
    logger.record("rollout/post_return_std", float(it.post_returns.std()))
    rates = it.success_rates
    if rates is not None:  # Meta-World: episodes that succeeded at some step
        logger.record("rollout/pre_success_rate", rates[0])
        logger.record("rollout/post_success_rate", rates[1])
    logger.record("train/surrogate_before", r.loss_before)
    logger.record("train/surrogate_after", r.loss_after)
    logger.record("train/kl", r.kl)
    for name, value in r.log_items().items():  # the meta-optimiser's own numbers
        logger.record(f"train/{name}", value)
    learned = trainer.inner_step_sizes
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
    """Save the last completed iteration when a run stops early and say so in one line on stderr;
    a failure to save (full or read-only disk) is reported without hiding ``err``."""
    what = _stop_reason(err)
    if fresh:
        _say(f"\n{what} before the first iteration completed: nothing to keep")
        return
    try:
        save_checkpoint(ckpt, trainer.state_dict())
    except OSError as save_err:
        _say(
            f"\n{what}; the checkpoint of iteration {trainer.iteration} could not be saved: "
            f"{save_err} (the last periodic checkpoint in {ckpt.parent} stays)"
        )
        return
    _say(
        f"\n{what}: checkpoint of iteration {trainer.iteration} saved in {ckpt.parent} "
        f"(continue with: maml-rl train --resume {ckpt.parent})"
    )


def _stop_reason(err: BaseException) -> str:
    if isinstance(err, KeyboardInterrupt):
        name = str(err.args[0]) if err.args and str(err.args[0]).startswith("SIG") else "SIGINT"
        return f"interrupted ({name})"
    return "stopped by an error"


def _stderr_is_a_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _say(line: str) -> None:
    """A line on stderr; a closed terminal (SIGHUP) must not turn a clean stop into an error."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


# -- the loop -----------------------------------------------------------------------------------
def run_loop(
    trainer: MAMLTrainer, num_iterations: int, callbacks: Sequence[TrainingCallback]
) -> None:
    """Advance ``trainer`` to ``num_iterations`` completed iterations, calling the callbacks'
    ``on_iteration`` in order and, at the end, their ``on_stop`` in reverse order (the checkpoint
    first) with stop signals deferred; a non-finite post-adaptation return stops the run
    (``FloatingPointError``)."""
    error: BaseException | None = None
    STOP_SIGNALS.loops += 1
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
        STOP_SIGNALS.stopping(in_loop=True)
        try:
            with STOP_SIGNALS.deferred(deliver=False):
                failed: Exception | None = None
                for callback in reversed(callbacks):
                    try:
                        callback.on_stop(trainer, error)
                    except Exception as stop_err:  # every callback stops; the first failure
                        failed = failed or stop_err  # is raised
                if failed is not None and error is None:
                    raise failed
        finally:
            STOP_SIGNALS.loops -= 1


SIGNAL_NAMES = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")
"""The signals that stop a run as Ctrl-C does (those the platform has)."""


class _StopSignals:
    """TERM, INT, HUP and QUIT as Ctrl-C while a run trains (main thread only).

    The first signal raises ``KeyboardInterrupt("SIGTERM")`` (its name), so the loop stops and
    checkpoints the last completed iteration. Inside :meth:`deferred` (a checkpoint or a log row
    being written) a signal is only recorded and raised when the block ends; once the run is
    stopping (:meth:`stopping`) later signals are only recorded, so a second Ctrl-C or SIGTERM
    cannot cancel the stop's checkpoint or remove anything. A signal ignored when the run starts
    (``nohup``: SIGHUP; a background job: SIGINT, SIGQUIT) stays ignored; the previous handlers
    come back at the end.
    """

    def __init__(self) -> None:
        self.previous: dict[int, Any] = {}
        self.installed = False
        self.depth = 0
        self.pending: int | None = None
        self.stopped = False
        self.loops = 0  # run_loop calls in progress (a callback may train another run)

    def install(self) -> bool:
        """Handle the signals; False (nothing done) outside the main thread or when installed."""
        if self.installed or threading.current_thread() is not threading.main_thread():
            return False
        self.depth, self.pending, self.stopped = 0, None, False
        for name in SIGNAL_NAMES:
            sig = getattr(signal, name, None)
            if sig is None or signal.getsignal(sig) is signal.SIG_IGN:
                continue
            self.previous[sig] = signal.signal(sig, self._handle)
        self.installed = True
        return True

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self.previous.clear()
        self.installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.depth or self.stopped:
            self.pending = self.pending or signum
            return
        self._raise(signum)

    def _raise(self, signum: int) -> None:
        self.stopped = True
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def stopping(self, in_loop: bool) -> None:
        """From now on signals are only recorded: the run is ending anyway (only the outermost
        run: a run trained inside another's callback does not end the other)."""
        if self.installed and self.loops <= int(in_loop):
            self.stopped = True

    @contextmanager
    def deferred(self, deliver: bool = True) -> Iterator[None]:
        """Record signals during the block; with ``deliver`` raise the first one after it."""
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if deliver and not self.depth and self.pending is not None and not self.stopped:
            signum, self.pending = self.pending, None
            self._raise(signum)


STOP_SIGNALS = _StopSignals()


# -- start and resume ---------------------------------------------------------------------------
Callbacks = Sequence[TrainingCallback | IterationFunction]


def _write_config(run_dir: Path, config: TrainConfig) -> None:
    atomic_write_text(run_dir / CONFIG_NAME, yaml.safe_dump(config.to_dict(), sort_keys=True))


def train(
    config: TrainConfig,
    run_dir: str | Path | None = None,
    stdout: bool = True,
    callbacks: Callbacks = (),
) -> Path:
    """Start a run of ``config`` in ``run_dir`` (default :func:`run_folder`: ``log_dir/run_name``
    or ``log_dir/<generated name>``); returns the run folder. ``callbacks``
    (:class:`TrainingCallback` objects or functions called as ``f(trainer, result)`` after every
    iteration) run after the logging ones. A folder that holds anything but a run of ours with
    no logged iteration is refused (``FileExistsError``) before any file is written in it."""
    folder = run_folder(config, run_dir=run_dir)

    def start() -> tuple[MAMLTrainer, bool]:
        trainer = MAMLTrainer(config)
        _write_config(folder, config)
        return trainer, False

    return _in_locked_folder(folder, start, stdout, callbacks, new=True)


def resume(
    run_dir: str | Path,
    overrides: dict[str, Any] | None = None,
    stdout: bool = True,
    callbacks: Callbacks = (),
) -> Path:
    """Continue the run in ``run_dir`` from its checkpoint; ``overrides`` may change only
    :data:`RESUMABLE_KEYS` (e.g. ``{"num_iterations": 1000}``; ``config.yaml`` is rewritten with
    them). Returns the run folder. A folder without ``checkpoint.pt`` is refused before any file
    is written in it; ``num_iterations`` below the completed iterations is a
    :class:`~maml_rl.errors.ConfigError`; equal to them, nothing is done (said on stderr)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run folder at {run_dir}")
    if not (run_dir / CHECKPOINT_NAME).is_file():
        check_not_busy(run_dir)  # a run starting there: say so rather than "no run"
        raise FileNotFoundError(
            f"{run_dir} holds no run to resume (no {CHECKPOINT_NAME}); give a run folder "
            "(log_dir/<run>); a run stopped before its first checkpoint is started afresh"
        )

    def restart() -> tuple[MAMLTrainer, bool] | None:
        state = load_checkpoint(run_dir / CHECKPOINT_NAME)
        changes = dict(overrides or {})
        fixed = sorted(set(changes) - RESUMABLE_KEYS)
        if fixed:
            raise ValueError(f"cannot change {fixed} when resuming; only {sorted(RESUMABLE_KEYS)}")
        config = from_dict(changes, from_dict(state["config"])).validate()
        done = int(state["iteration"])
        if config.num_iterations < done:
            raise ConfigError(
                f"num_iterations={config.num_iterations} is below the {done} iterations the run "
                f"in {run_dir} has completed; a resume cannot undo iterations (give "
                f"num_iterations above {done} to continue it)"
            )
        trainer = MAMLTrainer(config)
        try:  # the whole state is checked first, also when there is nothing left to do
            trainer.load_state_dict(state, run_dir / CHECKPOINT_NAME)
        except BaseException:
            trainer.close()
            raise
        if config.num_iterations == done:
            trainer.close()
            _say(
                f"maml-rl: the run in {run_dir} already has its {done} iterations "
                f"(num_iterations={done}): nothing to do; --set num_iterations=N continues it"
            )
            return None
        kept = truncate_progress(run_dir, trainer.iteration)
        if kept < trainer.iteration:
            print(
                f"warning: {run_dir / 'progress.csv'} holds {kept} of the {trainer.iteration} "
                "completed iterations; the training continues, later rows are appended",
                file=sys.stderr,
            )
        _write_config(run_dir, config)
        return trainer, True

    return _in_locked_folder(run_dir, restart, stdout, callbacks, new=False)


def _in_locked_folder(
    run_dir: Path,
    make_trainer: Callable[[], tuple[MAMLTrainer, bool] | None],
    stdout: bool,
    callbacks: Callbacks,
    *,
    new: bool,
) -> Path:
    """Hold ``run_dir`` (:func:`~maml_rl.run_folders.locked_run_folder`: checked when ``new``,
    locked, removed again if this call created it and no iteration was logged), build the
    trainer (``make_trainer`` returns it and whether the run is resumed, or None: nothing to do)
    and run the loop with stop signals handled; callbacks in order: the log, the caller's, the
    progress bar, the checkpoints."""
    with locked_run_folder(run_dir, new=new) as created:
        installed = STOP_SIGNALS.install()
        try:
            try:
                made = make_trainer()
            except KeyboardInterrupt as err:
                _say(f"\n{_stop_reason(err)} before training started: nothing new to save")
                raise
            if made is None:
                return run_dir
            trainer, resumed = made
            try:
                _run(trainer, run_dir, resumed, created, stdout, callbacks)
            finally:
                trainer.close()
        finally:
            if installed:
                STOP_SIGNALS.restore()
    return run_dir


def _run(
    trainer: MAMLTrainer,
    run_dir: Path,
    resumed: bool,
    created: bool,
    stdout: bool,
    callbacks: Callbacks,
) -> None:
    config = trainer.config
    checkpoints = CheckpointCallback(
        run_dir, config.checkpoint_every, config.keep_checkpoints, created
    )
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
    except KeyboardInterrupt as err:  # before the first iteration: nothing new to save
        _say(f"\n{_stop_reason(err)} before training started: nothing new to save")
        raise
    if stdout:  # beside the table: where this run's numbers go, before the first of them
        try:
            print(
                f"run folder: {run_dir} (iterations {trainer.iteration + 1} to "
                f"{config.num_iterations})",
                flush=True,
            )
        except (OSError, ValueError):  # stdout already gone (| head): the run goes on
            discard_stdout()
    run_loop(
        trainer,
        config.num_iterations,
        [
            LogCallback(logger),
            *(c if isinstance(c, TrainingCallback) else _Function(c) for c in callbacks),
            *progress,
            BusyMachineHint(),
            checkpoints,
        ],
    )


# -- results ------------------------------------------------------------------------------------
def load_policy(path: str | Path) -> tuple[MetaPolicy, TrainConfig]:
    """The trained policy (with Meta-SGD's learned step sizes, if the run learned them) and
    config of a run folder or checkpoint file: ``meta.policy`` is the network (theta),
    ``meta.step_sizes`` rho or None; :func:`maml_rl.adapt` takes ``meta`` as it is."""
    return policy_from_state(load_checkpoint(path), resolve_checkpoint(path))


def policy_from_state(state: dict[str, Any], source: Path) -> tuple[MetaPolicy, TrainConfig]:
    """The policy (and step sizes) and config of a loaded checkpoint ``state`` (read from
    ``source``, the file named when its policy does not fit the policy its config builds)."""
    config = from_dict(state["config"]).validate()
    meta = make_meta_policy(TaskFamily.from_config(config), config)
    load_policy_state(meta, state["policy"], source)
    return meta, config


__all__: Sequence[str] = [
    "TrainingCallback",
    "load_policy",
    "resume",
    "run_loop",
    "train",
]
