"""Training logs: stable-baselines3's logger (stdout, CSV, TensorBoard) in a run folder."""

from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from stable_baselines3.common.logger import (
    HParam,
    HumanOutputFormat,
    KVWriter,
    Logger,
    TensorBoardOutputFormat,
    filter_excluded_keys,
)

from maml_rl.files import atomic_write

PROGRESS_CSV = "progress.csv"
ITERATION_KEY = "time/iteration"


def read_progress(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and the complete rows of a ``progress.csv`` (missing file: no rows).

    A row with fewer or more fields than the header (the partial last line a kill mid-write
    leaves) is skipped, never an error.
    """
    path = Path(path)
    if not path.is_file():
        return [], []
    with path.open(newline="") as f:
        lines = list(csv.reader(f))
    if not lines:
        return [], []
    header = lines[0]
    rows = [dict(zip(header, r)) for r in lines[1:] if len(r) == len(header)]
    return header, rows


def _iteration(row: dict[str, str]) -> int | None:
    try:
        return int(float(row.get(ITERATION_KEY) or "nan"))
    except ValueError:
        return None


def _write_table(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    """Replace ``path`` atomically by ``header`` and ``rows`` (missing cells empty)."""

    def write(f: Any) -> None:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([[row.get(k, "") for k in header] for row in rows])

    atomic_write(path, write, mode="w")


def logged_iterations(path: str | Path) -> int:
    """The complete rows of a ``progress.csv`` that name an iteration (missing file: 0)."""
    return sum(_iteration(r) is not None for r in read_progress(path)[1])


def truncate_progress(run_dir: Path, last_iteration: int) -> int:
    """Keep only the complete CSV rows of iterations 1..``last_iteration`` (dropping work an
    interruption lost, and a partial last line); the file is replaced atomically, so a kill
    here leaves the old file. Returns the number of iteration rows kept."""
    path = run_dir / PROGRESS_CSV
    header, rows = read_progress(path)
    if not header:
        return 0
    kept = [r for r in rows if (i := _iteration(r)) is not None and i <= last_iteration]
    _write_table(path, header, kept)
    return len(kept)


class CrashSafeCSVOutputFormat(KVWriter):
    """``progress.csv`` for stable-baselines3's logger, safe to interrupt and to continue.

    Rows are appended (and flushed) one per ``dump``, formatted as SB3's ``CSVOutputFormat``
    formats them. When a row brings a column the file lacks, the whole file is rewritten
    atomically with the new header, earlier rows getting empty cells (SB3 rewrites in place,
    which on an appended file duplicated the header and the rows). ``resume`` continues an
    existing file and its columns; otherwise the file starts empty.
    """

    def __init__(self, filename: str | Path, resume: bool = False) -> None:
        self.path = Path(filename)
        self.keys: list[str] = read_progress(self.path)[0] if resume else []
        if not resume or not self.path.is_file():
            atomic_write(self.path, lambda f: None, mode="w")
        self.file = self.path.open("a", newline="")

    def write(
        self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0
    ) -> None:
        values = filter_excluded_keys(key_values, key_excluded, "csv")
        extra = [k for k in values if k not in self.keys]
        if extra:
            self.file.close()
            _, rows = read_progress(self.path)
            self.keys = [*self.keys, *extra]
            _write_table(self.path, self.keys, rows)
            self.file = self.path.open("a", newline="")
        self.file.write(",".join(_cell(values.get(k)) for k in self.keys) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _cell(value: Any) -> str:
    """A CSV cell as SB3's CSV writer writes it: strings quoted (quotes doubled), None empty."""
    if isinstance(value, str):
        return '"' + value.replace('"', '""') + '"'
    return "" if value is None else str(value)


class _AboveProgressBar:
    """A text stream that prints through ``tqdm.write``, so tables stay above the progress bar."""

    def write(self, text: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(text, end="")

    def flush(self) -> None:
        sys.stdout.flush()


def discard_stdout() -> None:
    """Point the process's stdout at the null device once it is gone (a closed pipe, a closed
    terminal): later writes, and the flush at exit, then succeed without a word."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(fd, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass
    finally:
        os.close(fd)


class StdoutOutputFormat(KVWriter):
    """The per-iteration table on stdout, which may go away without stopping the run.

    When stdout is closed under it (``maml-rl train | head``: a broken pipe; a closed terminal)
    the table stops, one line on stderr says so, and training goes on: ``progress.csv`` and
    TensorBoard, written before the table, hold every row.
    """

    def __init__(self, stream: Any, csv_path: Path) -> None:
        self.table = HumanOutputFormat(stream, max_length=48)
        self.csv_path = csv_path
        self.gone = False

    def write(
        self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0
    ) -> None:
        if self.gone:
            return
        try:
            self.table.write(key_values, key_excluded, step)
        except OSError as err:  # BrokenPipeError, EIO
            self.gone = True
            discard_stdout()
            try:
                print(
                    f"maml-rl: stdout is closed ({err.strerror or err}): the table is no longer "
                    f"printed; training goes on, every iteration is logged in {self.csv_path}",
                    file=sys.stderr,
                    flush=True,
                )
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        pass  # stdout is not ours to close


def make_logger(
    run_dir: Path, stdout: bool = True, resume: bool = False, progress_bar: bool = False
) -> Logger:
    """A logger writing ``progress.csv`` and TensorBoard events into ``run_dir``, then stdout (the
    files first: a closed stdout never costs a row, see :class:`StdoutOutputFormat`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    csv_path = run_dir / PROGRESS_CSV
    formats: list[KVWriter] = [
        CrashSafeCSVOutputFormat(csv_path, resume=resume),
        TensorBoardOutputFormat(str(run_dir)),
    ]
    if stdout:
        stream = _AboveProgressBar() if progress_bar else sys.stdout
        formats.append(StdoutOutputFormat(stream, csv_path))
    return Logger(folder=str(run_dir), output_formats=formats)


def log_config(logger: Logger, config: dict[str, Any]) -> None:
    """Write the resolved config to TensorBoard as text and as hparams."""
    text = "```\n" + yaml.safe_dump(config, sort_keys=True) + "```"
    hparams = {
        k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in config.items()
    }
    metrics = {"rollout/post_return_mean": 0.0, "rollout/pre_return_mean": 0.0}
    for fmt in logger.output_formats:
        if isinstance(fmt, TensorBoardOutputFormat):
            fmt.write(
                {"config": text, "hparams": HParam(hparams, metrics)},
                {"config": (), "hparams": ()},
                0,
            )
