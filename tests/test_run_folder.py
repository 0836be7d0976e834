"""Run folders under faults: progress.csv survives resumes and kills, one process per folder,
no leftovers from kills or failed starts, unusable rewards stop the run with a message."""

from __future__ import annotations

import csv
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from maml_rl.advantages import compute_advantages, unusable_reason
from maml_rl.checkpoint import load_checkpoint
from maml_rl.config import TrainConfig
from maml_rl.errors import RunFolderBusy, UnusableBatchError
from maml_rl.files import lock_run_folder
from maml_rl.logger import CrashSafeCSVOutputFormat, read_progress, truncate_progress
from maml_rl.plots import plot_training_curves
from maml_rl.run import resume, train
from maml_rl.sampler import VectorSampler
from tests.conftest import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
IT = "time/iteration"


def _config(**overrides) -> TrainConfig:
    sizes = dict(
        meta_batch_size=2,
        episodes_per_task=2,
        hidden_sizes=[8],
        num_iterations=3,
        checkpoint_every=1,
    )
    return tiny_config(**{**sizes, **overrides})


def _lines(path: pathlib.Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


# -- progress.csv ----------------------------------------------------------------------------
def test_a_column_new_after_resume_rewrites_one_header_and_keeps_every_row(tmp_path):
    path = tmp_path / "progress.csv"
    path.write_text(f"{IT},a\n1,10\n2,20\n")
    out = CrashSafeCSVOutputFormat(path, resume=True)
    out.write({IT: 3, "a": 30, "b": 0.5}, {IT: (), "a": (), "b": ()})
    out.write({IT: 4, "a": 40}, {IT: (), "a": ()})
    out.close()
    assert _lines(path) == [
        [IT, "a", "b"],
        ["1", "10", ""],
        ["2", "20", ""],
        ["3", "30", "0.5"],
        ["4", "40", ""],
    ]


def test_rows_are_formatted_like_stable_baselines3(tmp_path):
    from stable_baselines3.common.logger import CSVOutputFormat

    values = {IT: 1, "x": 0.1 + 0.2, "s": 'say "hi", then go', "n": None, "f": 1e-20}
    excluded = {k: () for k in values}
    ours, theirs = tmp_path / "ours.csv", tmp_path / "theirs.csv"
    out = CrashSafeCSVOutputFormat(ours)
    out.write(values, excluded)
    out.close()
    ref = CSVOutputFormat(str(theirs))
    ref.keys = list(values)  # SB3 orders new keys as a set does; fix the order to compare
    ref.write(values, excluded)
    ref.close()
    assert ours.read_text().splitlines()[1] == theirs.read_text().splitlines()[0]  # no header


def test_truncation_drops_a_partial_last_row_and_later_iterations(tmp_path):
    path = tmp_path / "progress.csv"
    path.write_text(f"{IT},a\n1,10\n2,20\n3,30\n4,4")  # killed mid-row
    assert truncate_progress(tmp_path, 2) == 2
    assert _lines(path) == [[IT, "a"], ["1", "10"], ["2", "20"]]
    path.write_text(f"{IT},a\n1,10\n2")
    assert truncate_progress(tmp_path, 5) == 1


def test_truncation_interrupted_mid_write_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "progress.csv"
    text = f"{IT},a\n" + "".join(f"{i},{i * 10}\n" for i in range(1, 32))
    path.write_text(text)

    class Killed(BaseException):
        pass

    real_writer = csv.writer

    def dying_writer(*args, **kwargs):
        writer = real_writer(*args, **kwargs)

        class Dying:
            def writerow(self, row):
                writer.writerow(row)

            def writerows(self, rows):
                raise Killed

        return Dying()

    monkeypatch.setattr(csv, "writer", dying_writer)
    with pytest.raises(Killed):
        truncate_progress(tmp_path, 10)
    assert path.read_text() == text
    assert not list(tmp_path.glob("*.tmp"))


def test_curves_skip_a_partial_last_row(tmp_path):
    (tmp_path / "progress.csv").write_text(
        f"{IT},rollout/pre_return_mean,rollout/post_return_mean\n1,-5,-3\n2,-4,-2\n3,-4"
    )
    assert plot_training_curves([tmp_path], tmp_path / "c.png").is_file()
    assert len(read_progress(tmp_path / "progress.csv")[1]) == 2


def test_resume_with_a_column_the_earlier_iterations_lacked(tmp_path):
    run = train(_config(num_iterations=2), tmp_path / "run", stdout=False)
    header, rows = read_progress(run / "progress.csv")
    dropped = "time/meta_step_line_search_s"
    with (run / "progress.csv").open("w", newline="") as f:  # as if iterations 1-2 lacked it
        writer = csv.writer(f, lineterminator="\n")
        keep = [k for k in header if k != dropped]
        writer.writerow(keep)
        writer.writerows([[r[k] for k in keep] for r in rows])
    resume(run, {"num_iterations": 4}, stdout=False)
    lines = _lines(run / "progress.csv")
    assert sum(line == lines[0] for line in lines) == 1 and dropped in lines[0]
    _, rows = read_progress(run / "progress.csv")
    assert [int(r[IT]) for r in rows] == [1, 2, 3, 4]
    assert rows[0][dropped] == "" and rows[3][dropped] != ""
    assert plot_training_curves([run], tmp_path / "c.png").is_file()


# -- one process per run folder --------------------------------------------------------------
_HOLD = """
import sys, time
from maml_rl.files import lock_run_folder
with lock_run_folder(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_training_into_a_locked_folder_stops_at_once(tmp_path, capsys):
    from maml_rl.cli import main

    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(run)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusy, match=f"in use by process {holder.pid}"):
            train(_config(), run, stdout=False)
        assert main(["train", "--resume", str(run), "--quiet"]) == 2
        assert "in use by process" in capsys.readouterr().err
        assert not (run / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with lock_run_folder(run):  # released by the kill
        pass


def test_resume_removes_temporaries_of_killed_writes(tmp_path):
    run = train(_config(num_iterations=1), tmp_path / "run", stdout=False)
    stale = [run / "checkpoint.pt.abc123.tmp", run / "progress.csv.x9.tmp"]
    for path in stale:
        path.write_bytes(b"partial")
    mine = run / "notes.tmp"
    mine.write_text("a user's file")
    resume(run, {"num_iterations": 2}, stdout=False)
    assert not any(p.exists() for p in stale) and mine.exists()
    assert load_checkpoint(run)["iteration"] == 2


def test_a_failed_start_leaves_no_run_folder(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown env id"):
        train(_config(env_id="MAML/Nope-v0"), tmp_path / "a", stdout=False)
    assert not (tmp_path / "a").exists()

    def fail(self, iteration):
        raise RuntimeError("boom")

    monkeypatch.setattr("maml_rl.trainer.MAMLTrainer.run_iteration", fail)
    with pytest.raises(RuntimeError, match="boom"):
        train(_config(), tmp_path / "b", stdout=False)
    assert not (tmp_path / "b").exists()
    (tmp_path / "c").mkdir()  # a folder the user made is never removed
    with pytest.raises(RuntimeError, match="boom"):
        train(_config(), tmp_path / "c", stdout=False)
    assert (tmp_path / "c").is_dir()


# -- unusable rewards ------------------------------------------------------------------------
def _advantages(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    obs = torch.linspace(-1, 1, rewards.numel() * 2).reshape(*rewards.shape, 2)
    mask = torch.ones_like(rewards)
    return mask, compute_advantages(obs, rewards, mask, 0.99, 1.0, True)


def test_unusable_reason_names_nan_and_overflowing_rewards():
    rewards = torch.rand(50, 2, 3, generator=torch.Generator().manual_seed(0)) - 0.5
    mask, adv = _advantages(rewards)
    assert unusable_reason(rewards, mask, adv, True) is None
    huge = rewards * 1e20
    mask, adv = _advantages(huge)
    assert bool((adv == 0).all())  # what float32 normalisation does to them
    assert "overflow float32" in unusable_reason(huge, mask, adv, True)
    nan = rewards.clone()
    nan[3, 1, 2] = float("nan")  # the other task stays usable
    mask, adv = _advantages(nan)
    assert "returned NaN rewards (task 1 of the batch, step 3)" in unusable_reason(
        nan, mask, adv, True
    )
    constant = torch.full((50, 2, 3), 2.0)  # no spread: zero advantages are right
    mask, adv = _advantages(constant)
    assert unusable_reason(constant, mask, adv, True) is None


@pytest.mark.parametrize(("scale", "message"), [(1e20, "overflow float32"), (None, "NaN rewards")])
def test_training_stops_with_a_checkpoint_when_rewards_are_unusable(
    tmp_path, monkeypatch, scale, message
):
    real = VectorSampler.sample
    calls = []

    def corrupt(self, tasks, params, k, seed):
        batch = real(self, tasks, params, k, seed)
        calls.append(1)
        if len(calls) > 4:  # from the third iteration on
            rewards = batch.rewards * scale if scale else batch.rewards * float("nan")
            batch = batch._replace(rewards=rewards)
        return batch

    monkeypatch.setattr(VectorSampler, "sample", corrupt)
    with pytest.raises(UnusableBatchError, match=f"iteration 3, inner step 1 batch: .*{message}"):
        train(_config(num_iterations=5, checkpoint_every=10), tmp_path / "run", stdout=False)
    assert load_checkpoint(tmp_path / "run")["iteration"] == 2


def test_two_runs_started_in_the_same_second_get_two_folders(tmp_path, monkeypatch):
    from maml_rl import run, run_folders

    monkeypatch.setattr(run_folders, "default_run_name", lambda config, kind=None: "same-second")
    config = _config(num_iterations=1, log_dir=str(tmp_path))
    first = run.train(config, stdout=False)
    second = run.train(config, stdout=False)
    assert first.name == "same-second" and second.name == "same-second-2"
    assert (first / "checkpoint.pt").exists() and (second / "checkpoint.pt").exists()
