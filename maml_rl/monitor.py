"""Training logs: stable-baselines3's logger (stdout, CSV, TensorBoard) in a run folder."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import yaml
from stable_baselines3.common.logger import (
    CSVOutputFormat,
    HParam,
    HumanOutputFormat,
    KVWriter,
    Logger,
    TensorBoardOutputFormat,
)

PROGRESS_CSV = "progress.csv"
ITERATION_KEY = "time/iteration"


class _AppendingCSVOutputFormat(CSVOutputFormat):
    """CSV output that continues an existing file (same columns) instead of truncating it."""

    def __init__(self, filename: str) -> None:
        path = Path(filename)
        header: list[str] = []
        if path.is_file():
            with path.open() as f:
                header = next(csv.reader(f), [])
        self.file = open(filename, "a+")
        self.keys = header
        self.separator = ","
        self.quotechar = '"'


def truncate_progress(run_dir: Path, last_iteration: int) -> None:
    """Drop CSV rows logged after ``last_iteration`` (work lost by an interruption)."""
    path = run_dir / PROGRESS_CSV
    if not path.is_file():
        return
    with path.open() as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    col = header.index(ITERATION_KEY) if ITERATION_KEY in header else None
    if col is not None:
        body = [r for r in body if r[col] and int(float(r[col])) <= last_iteration]
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(body)


class _AboveProgressBar:
    """A text stream that prints through ``tqdm.write``, so tables stay above the progress bar."""

    def write(self, text: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(text, end="")

    def flush(self) -> None:
        sys.stdout.flush()


def make_logger(
    run_dir: Path, stdout: bool = True, resume: bool = False, progress_bar: bool = False
) -> Logger:
    """A logger writing ``progress.csv`` and TensorBoard events into ``run_dir`` (and stdout)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    formats: list[KVWriter] = []
    if stdout:
        stream = _AboveProgressBar() if progress_bar else sys.stdout
        formats.append(HumanOutputFormat(stream, max_length=48))
    csv_path = str(run_dir / PROGRESS_CSV)
    formats.append(_AppendingCSVOutputFormat(csv_path) if resume else CSVOutputFormat(csv_path))
    formats.append(TensorBoardOutputFormat(str(run_dir)))
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
