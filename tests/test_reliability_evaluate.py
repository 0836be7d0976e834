"""evaluate's results are never lost or mixed: returns.csv and returns.json are published
together, plots atomically, the output folder is checked and locked before any work."""

from __future__ import annotations

import csv
import errno
from pathlib import Path

import matplotlib.figure
import pytest

from maml_rl.cli import main
from maml_rl.evaluation import EvalSettings, evaluate, load_method
from maml_rl.files import lock_run_folder
from maml_rl.run import train
from tests.conftest import tiny_config

SMALL = ["--num-tasks", "2", "--num-steps", "1", "--env-steps", "100"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    config = tiny_config(meta_batch_size=2, episodes_per_task=2, hidden_sizes=[8], num_iterations=1)
    return train(config, tmp_path_factory.mktemp("evrel") / "run", stdout=False)


def _one_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("maml-rl: error: ")
    return lines[0]


@pytest.fixture
def no_evaluation(monkeypatch):
    """Fail the test if any evaluation work starts."""

    def refuse(*args, **kwargs):
        raise AssertionError("the evaluation ran before the output folder was checked")

    monkeypatch.setattr("maml_rl.evaluation.evaluate_method", refuse)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _fail_csv_after_rows(monkeypatch, rows: int) -> None:
    real = csv.writer

    class Failing:
        def __init__(self, f, **kwargs):
            self.writer, self.f, self.left = real(f, **kwargs), f, rows

        def writerow(self, row):
            if self.left == 0:
                self.f.flush()
                raise OSError(errno.ENOSPC, "No space left on device")
            self.left -= 1
            return self.writer.writerow(row)

    monkeypatch.setattr(csv, "writer", Failing)


def _fail_savefig_midway(monkeypatch) -> None:
    def savefig(self, path, **kwargs):
        Path(path).write_bytes(b"\x89PNG\r\n\x1a\n partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)


@pytest.mark.parametrize("where", ["returns.csv", "returns.png"])
def test_a_failure_mid_write_keeps_the_earlier_results_and_no_partial_file(
    run_dir, tmp_path, monkeypatch, where
):
    out = tmp_path / "out"
    method = load_method(run_dir)
    settings = EvalSettings(num_tasks=2, num_steps=1, env_steps=100, seed=1)
    evaluate([method], settings, out, stdout=False)
    before = _snapshot(out)
    assert {"returns.json", "returns.csv", "returns.png"} <= set(before)
    with monkeypatch.context() as m:
        if where == "returns.csv":
            _fail_csv_after_rows(m, 3)
        else:
            _fail_savefig_midway(m)
        with pytest.raises(OSError, match="No space left"):
            evaluate([load_method(run_dir)], EvalSettings(2, 1, 100, seed=2), out, stdout=False)
    after = _snapshot(out)
    assert not [name for name in after if ".tmp" in name], list(after)
    if where == "returns.csv":
        assert after == before  # all of the earlier results, untouched
    else:  # the results were published before the plot failed; the old plot stays whole
        assert after["returns.png"] == before["returns.png"]
        assert after["returns.json"] != before["returns.json"]


def test_a_kill_leaves_temporaries_that_the_next_evaluation_removes(run_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / "returns.csv.k1ll3d.tmp", out / "returns.png.k1ll3d.tmp.png"]
    for path in stale:
        path.write_bytes(b"partial")
    (out / "notes.tmp").write_text("the user's")
    evaluate([load_method(run_dir)], EvalSettings(2, 1, 100), out, plots=False, stdout=False)
    assert not any(p.exists() for p in stale)
    assert (out / "notes.tmp").read_text() == "the user's"


def test_a_second_evaluation_into_a_busy_folder_is_one_line(
    run_dir, tmp_path, capsys, no_evaluation
):
    out = tmp_path / "out"
    with lock_run_folder(out):
        code = main(["evaluate", str(run_dir), *SMALL, "--no-plots", "-o", str(out)])
    assert code == 2
    line = _one_line(capsys)
    assert f"output folder {out} is in use by process" in line and "--output" in line, line
    assert not (out / "returns.json").exists()


@pytest.mark.parametrize("kind", ["file", "under a file"])
def test_an_output_path_that_is_a_file_is_refused_before_evaluating(
    run_dir, tmp_path, capsys, no_evaluation, kind
):
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder")
    out = blocker if kind == "file" else blocker / "evaluation"
    assert main(["evaluate", str(run_dir), *SMALL, "-o", str(out)]) == 2
    line = _one_line(capsys)
    assert f"{blocker} is a file, not a folder" in line, line
    assert blocker.read_text() == "not a folder"


def test_a_full_disk_is_found_before_evaluating(run_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    evaluated = []
    monkeypatch.setattr(
        "maml_rl.evaluation.evaluate_method", lambda *a, **k: evaluated.append(1) or 1 / 0
    )

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("maml_rl.files.tempfile.mkstemp", full)
    assert main(["evaluate", str(run_dir), *SMALL, "-o", str(out)]) == 1
    line = _one_line(capsys)
    assert f"cannot write into output folder {out}: No space left on device" in line, line
    assert not evaluated
