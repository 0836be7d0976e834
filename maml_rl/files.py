"""Crash-safe files of a run folder: atomic replacement, an exclusive lock per folder, and the
removal of temporary files a killed process left behind.

Every file maml-rl rewrites (checkpoints, ``progress.csv`` when it is truncated or gains a
column, ``config.yaml``) is written to ``<name>.<random>.tmp`` in the same folder, flushed to
disk and renamed over the target, so a kill at any moment leaves either the old or the new file,
never a part of one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from maml_rl.errors import RunFolderBusy

LOCK_NAME = ".lock"


def atomic_write(path: str | Path, write: Callable[[IO[Any]], None], mode: str = "wb") -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, fsync it and rename it over
    ``path``. On any error (or interruption) the temporary file is removed and ``path`` is left
    as it was. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        newline = {} if "b" in mode else {"newline": ""}
        with os.fdopen(fd, mode, **newline) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of a text file."""
    return atomic_write(path, lambda f: f.write(text), mode="w")


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


TEMPORARY_PATTERNS = (
    "checkpoint.pt.*.tmp",
    "progress.csv.*.tmp",
    "config.yaml.*.tmp",
    "checkpoints/iteration_*.pt.*.tmp",
)
"""The temporary files :func:`atomic_write` leaves in a run folder when killed mid-write."""


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files :func:`atomic_write` leaves when its process is killed
    mid-write (``checkpoint.pt.*.tmp``, ``progress.csv.*.tmp``, ``config.yaml.*.tmp``,
    ``checkpoints/iteration_*.pt.*.tmp``); returns what was removed. Call it only while holding
    the folder's lock (:func:`lock_run_folder`), when no write of this run can be in progress."""
    folder = Path(folder)
    removed = [p for pattern in TEMPORARY_PATTERNS for p in folder.glob(pattern) if p.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


@contextmanager
def lock_run_folder(folder: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the block.

    The lock is ``fcntl.flock`` on ``folder/.lock``: the operating system drops it when the
    process ends, however it ends (kill -9 included), so a stale lock never blocks a resume.
    A second process asking for it gets :class:`RunFolderBusy` at once (no waiting). The
    ``.lock`` file stays in the folder (deleting it would let two processes lock two files).
    On platforms without ``fcntl`` (Windows) the block runs unlocked.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield folder
        return
    path = folder / LOCK_NAME
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise _busy(folder, f.read()) from None
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()}\n")
        f.flush()
        try:
            yield folder
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _busy(folder: Path, holder: str) -> RunFolderBusy:
    return RunFolderBusy(
        f"run folder {folder} is in use by {holder.strip() or 'another process'}; wait for it "
        "to end, or use another run_name / log_dir"
    )


def check_not_busy(folder: str | Path) -> None:
    """Raise :class:`RunFolderBusy` when another process holds ``folder``'s lock; creates no
    file (a folder without ``.lock`` is not locked)."""
    path = Path(folder) / LOCK_NAME
    try:
        import fcntl

        f = open(path)
    except (ImportError, OSError):  # not POSIX, no lock file, unreadable: not known to be busy
        return
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(Path(folder), f.read()) from None
        except OSError:
            return
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
