"""Crash-safe files of a run folder: atomic replacement, an exclusive lock per folder, and the
removal of temporary files a killed process left behind.

Every file maml-rl rewrites (checkpoints, ``progress.csv`` when it is truncated or gains a
column, ``config.yaml``) is written to ``<name>.<random>.tmp`` in the same folder, flushed to
disk and renamed over the target, so a kill at any moment leaves either the old or the new file,
never a part of one.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from maml_rl.errors import RunFolderBusy

LOCK_NAME = ".lock"


def atomic_write(path: str | Path, write: Callable[[IO[Any]], None], mode: str = "wb") -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, fsync it and rename it over
    ``path``. On any error (or interruption) the temporary file is removed and ``path`` is left
    as it was. Returns ``path`` (:func:`publish_together` of one file)."""
    publish_together([(path, write, mode)])
    return Path(path)


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


# -- output folders of results (evaluate) -------------------------------------------------------
_PROBE_PREFIX = ".write-check."


def check_output_folder(folder: str | Path, probe_bytes: int = 256 * 1024) -> Path:
    """Make sure results can be written into ``folder`` before any work is spent on them: it is
    a folder or can be created, and a temporary file of ``probe_bytes`` can be written, flushed
    to disk and removed there. Raises ``FileExistsError`` (a file is in the way) or
    ``ValueError`` (no permission, read-only file system), the user's to fix (exit 2), or
    ``OSError`` naming the folder (full disk, I/O error: the machine's, exit 1)."""
    folder = Path(folder)
    for part in [folder, *folder.parents]:
        if part.exists() and not part.is_dir():
            raise FileExistsError(f"output folder {folder}: {part} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=_PROBE_PREFIX, suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(b"\0" * probe_bytes)
                f.flush()
                os.fsync(f.fileno())
        finally:
            Path(probe).unlink(missing_ok=True)
    except OSError as err:
        reason = err.strerror or str(err)
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise ValueError(f"cannot write into output folder {folder}: {reason}") from None
        raise OSError(err.errno, f"cannot write into output folder {folder}: {reason}") from None
    return folder


def publish_together(files: Sequence[tuple[str | Path, Callable[[IO[Any]], None], str]]) -> None:
    """Write several files as one result: each ``(path, write, mode)`` to a temporary file
    next to its path (flushed to disk), then, once all are complete, rename them over their
    paths in order; the last is the commit. A failure while writing removes every temporary and
    leaves all paths as they were; readers who open the last file find the others of the same
    result already in place (a kill between two renames, a matter of microseconds, can leave the
    earlier ones new and the last one old, never a partial file)."""
    written: list[tuple[str, Path]] = []
    try:
        for path, write, mode in files:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
            written.append((tmp, path))
            newline = {} if "b" in mode else {"newline": ""}
            with os.fdopen(fd, mode, **newline) as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in written:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in written:
            Path(tmp).unlink(missing_ok=True)
        raise
    for folder in {path.parent for _, path in written}:
        _fsync_folder(folder)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path`` with the same suffix (``returns.png.<random>.tmp.png``:
    writers such as matplotlib's ``savefig`` pick the format from it) for the block to write;
    renamed over ``path`` when the block ends normally, removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def remove_stale_output_temporaries(folder: str | Path, names: Sequence[str]) -> list[Path]:
    """Delete the temporaries a killed evaluation left in its output folder: those of
    :func:`publish_together` and :func:`atomic_path` for the file names (or globs) ``names``
    (``<name>.<random>.tmp``, ``<name>.<random>.tmp<suffix>``) and the probes of
    :func:`check_output_folder`; returns what was removed. Call it only while holding the
    folder's lock (:func:`lock_run_folder`)."""
    folder = Path(folder)
    patterns = [f"{_PROBE_PREFIX}*.tmp"]
    for name in names:
        patterns += [f"{name}.*.tmp", f"{name}.*.tmp{Path(name).suffix}"]
    removed = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


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
