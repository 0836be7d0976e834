"""Run folders: their one naming and their one lifecycle, for every command that starts a run.

* **Naming.** :func:`run_name` is the one place a folder name is built:
  ``<env>__<kind>__<seed>`` (an evaluation of a random initialisation, :func:`random_init_folder`)
  or ``<env>__<kind>__<seed>__<time>`` (a run: :func:`default_run_name`, placed inside
  ``log_dir`` by :func:`run_folder`), for ``train`` (kind: the config's ``config_name``),
  ``baseline --kind pretrained|oracle`` (kind: ``pretrained``, ``oracle``) and
  ``evaluate --random-init`` (kind: ``random-init``).
* **Lifecycle.** :func:`locked_run_folder` is the one way a command runs in a folder
  (``train``, ``train --resume``, both baselines): a fresh run's folder is checked first
  (:func:`check_new_run_folder`: missing, empty, or only the files of a run of ours that logged
  nothing), then locked (:func:`~maml_rl.files.lock_run_folder`: a second command into it
  raises :class:`~maml_rl.errors.RunFolderBusy`), cleared of a killed write's temporaries and
  checked again under the lock; when the block ends, a folder the call created is removed
  again if it holds nothing worth keeping (:func:`remove_unused_run_folder`). A folder the
  user made, or one with a file that is not ours, is never removed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import yaml

from maml_rl.checkpoint import CHECKPOINT_NAME, load_checkpoint
from maml_rl.config import TrainConfig, from_dict
from maml_rl.errors import ConfigError
from maml_rl.files import LOCK_NAME, TEMPORARY_PATTERNS, lock_run_folder, remove_stale_temporaries
from maml_rl.logger import ITERATION_KEY, PROGRESS_CSV, logged_iterations, read_progress

CONFIG_NAME = "config.yaml"
PPO_ITERATION_KEY = "time/iterations"
"""The iteration column of stable-baselines3's ``progress.csv`` (an oracle's log)."""
RANDOM_INIT_KIND = "random-init"
"""The kind in the folder name of an evaluation of untrained policies (no run to put it in)."""


# -- naming -------------------------------------------------------------------------------------
def run_name(env_id: str, kind: str, seed: int, started: datetime | None = None) -> str:
    """``<env>__<kind>__<seed>``, with ``__<YYYYmmdd-HHMMSS>`` of ``started`` when given; ``<env>``
    is the id after any ``module:`` prefix, ``/`` written ``-`` (``MAML/Nav2D-v0`` ->
    ``MAML-Nav2D-v0``)."""
    env = env_id.split(":")[-1].replace("/", "-")
    name = f"{env}__{kind}__{seed}"
    return name if started is None else f"{name}__{started:%Y%m%d-%H%M%S}"


def default_run_name(config: TrainConfig, kind: str | None = None) -> str:
    """``<env>__<kind>__<seed>__<time>`` (now); ``kind`` defaults to the config's
    ``config_name``."""
    kind = config.config_name if kind is None else kind
    return run_name(config.env_id, kind, config.seed, datetime.now())


def run_folder(
    config: TrainConfig, kind: str | None = None, run_dir: str | Path | None = None
) -> Path:
    """The folder of a new run: ``run_dir`` when given, else ``log_dir/run_name``, else
    ``log_dir/<env>__<kind>__<seed>__<time>`` (``-2``, ``-3``, ... when that exists: two runs
    started in one second). ``run_name`` and the generated name must resolve to a folder inside
    ``log_dir`` (:class:`~maml_rl.errors.ConfigError` otherwise)."""
    if run_dir:
        return Path(run_dir)
    log_dir = Path(config.log_dir)
    if config.run_name:
        return _inside_log_dir(log_dir, str(config.run_name), "run_name")
    name = default_run_name(config, kind)
    folder = _inside_log_dir(log_dir, name, "config_name")
    for i in itertools.count(2):
        if not folder.exists():
            break
        folder = log_dir / f"{name}-{i}"
    return folder


def random_init_folder(config: TrainConfig) -> Path:
    """Where ``evaluate --random-init`` without a run writes: ``log_dir/<env>__random-init__<seed>``
    (no time: evaluations of one config share it)."""
    return Path(config.log_dir) / run_name(config.env_id, RANDOM_INIT_KIND, config.seed)


def _inside_log_dir(log_dir: Path, name: str, key: str) -> Path:
    folder = log_dir / name
    root, target = log_dir.resolve(), folder.resolve()
    if root not in target.parents:
        raise ConfigError(
            f"{key}={name!r} must name a folder inside log_dir ({log_dir}), but the run folder "
            f"would be {target}; give a plain name, or set log_dir"
        )
    return folder


# -- lifecycle ----------------------------------------------------------------------------------
@contextmanager
def locked_run_folder(folder: Path, *, new: bool) -> Iterator[bool]:
    """Hold ``folder`` for one command; yields whether this call created it.

    With ``new`` (a fresh run) the folder is refused (``FileExistsError``) before any file is
    written in it unless :func:`check_new_run_folder` accepts it, and checked again once locked.
    The lock (:func:`~maml_rl.files.lock_run_folder`) refuses a second command at once
    (:class:`~maml_rl.errors.RunFolderBusy`); a killed write's temporaries are removed under it.
    When the block ends, by an exception or not, a folder this call created is removed again,
    still under the lock, if it holds nothing worth keeping (:func:`remove_unused_run_folder`);
    a command refused by the lock removes nothing.
    """
    created = not folder.exists()
    if new:
        check_new_run_folder(folder)
    with lock_run_folder(folder):  # a second command is refused here, before it can clean up
        try:
            remove_stale_temporaries(folder)
            if new:
                check_new_run_folder(folder)  # again, now that no one else can start there
            yield created
        finally:
            if created:  # still under the lock: no other command is using the folder
                remove_unused_run_folder(folder)


def check_new_run_folder(run_dir: Path) -> None:
    """Refuse to start a fresh run in ``run_dir`` unless it is missing, empty, or holds only the
    files of a run of ours that logged no iteration (a start that failed or was killed early):
    never overwrite a user's files, a run, or logged iterations."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise FileExistsError(f"{run_dir} exists and is not a folder; choose another run folder")
    if (run_dir / CHECKPOINT_NAME).exists():
        raise FileExistsError(f"{run_dir} already holds a run; use --resume {run_dir}")
    logged = _logged_rows(run_dir)
    if logged:
        raise FileExistsError(
            f"{run_dir} holds {logged} logged iteration(s) in {PROGRESS_CSV} but no "
            f"{CHECKPOINT_NAME} (stopped before its first checkpoint): move or remove it to start "
            "afresh there, or choose another run_name"
        )
    foreign = sorted(p.name for p in run_dir.iterdir() if not _ours(p))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise FileExistsError(
            f"{run_dir} is not empty and not a maml-rl run (it holds {shown}); a fresh run goes "
            "into a new or empty folder: choose another run_name or log_dir"
        )


def _ours(path: Path) -> bool:
    """Whether ``path`` is a file a run of ours that logged no iteration leaves (an oracle's
    PPO log counts as none: without ``oracle.zip`` there is nothing to keep, as
    :func:`remove_unused_run_folder` judges it too)."""
    name = path.name
    if name == LOCK_NAME or name.startswith("events.out.tfevents."):
        return path.is_file()
    if any(path.match(pattern) for pattern in TEMPORARY_PATTERNS if "/" not in pattern):
        return path.is_file()
    if name == "checkpoints":
        return path.is_dir() and not any(path.iterdir())
    if name == PROGRESS_CSV:
        try:
            header = read_progress(path)[0]
        except Exception:
            return False
        return not header or ITERATION_KEY in header or PPO_ITERATION_KEY in header
    if name == CONFIG_NAME:
        try:
            values = yaml.safe_load(path.read_text())
            return isinstance(values, dict) and "env_id" in values and bool(from_dict(values))
        except Exception:
            return False
    return False


def _logged_rows(run_dir: Path) -> int:
    try:
        return logged_iterations(run_dir / PROGRESS_CSV)
    except Exception:
        return 1  # unreadable: treat as logged, never ours to overwrite or delete


_RUN_FILES = (CHECKPOINT_NAME, CONFIG_NAME, PROGRESS_CSV, "events.out.tfevents.*")


def remove_unused_run_folder(run_dir: Path) -> None:
    """Delete a run folder that holds no completed iteration: only this package's own files
    (lock, config, empty log, iteration-0 checkpoint); anything else keeps the folder (an
    oracle's ``oracle.zip``, a user's file), and so do logged iterations (rows in
    ``progress.csv``, a checkpoint past iteration 0)."""
    if not run_dir.is_dir():
        return
    if (run_dir / CHECKPOINT_NAME).is_file() and _iteration_of(run_dir) > 0:
        return
    if _logged_rows(run_dir):
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
