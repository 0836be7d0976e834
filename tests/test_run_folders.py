"""One run-folder naming and one lifecycle for every command that starts a run: ``train``, both
``baseline`` kinds and ``evaluate --random-init`` get their names from ``run_folders.run_name``;
``train``, ``train --resume`` and both baselines hold their folder through
``run_folders.locked_run_folder`` (checked, locked, removed again when nothing was kept)."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
from datetime import datetime

import pytest

from maml_rl.cli import main
from maml_rl.comparisons import train_oracle, train_pretrained
from maml_rl.config import TrainConfig
from maml_rl.errors import RunFolderBusy
from maml_rl.files import check_not_busy
from maml_rl.run import train
from maml_rl.run_folders import (
    default_run_name,
    locked_run_folder,
    random_init_folder,
    run_name,
)
from tests.conftest import SMALL_ARGS, SMALL_SIZES, tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
STAMP = r"\d{8}-\d{6}"
TINY = [*SMALL_ARGS, "num_iterations=1"]


def _config(**overrides) -> TrainConfig:
    sizes = dict(SMALL_SIZES, num_iterations=1)
    return tiny_config(**{**sizes, **overrides})


def _start(command: str, folder: pathlib.Path | None, config: TrainConfig) -> pathlib.Path:
    """Start ``command`` (``train``, ``pretrained`` or ``oracle``) at its smallest size."""
    if command == "train":
        return train(config, folder, stdout=False)
    if command == "pretrained":
        return train_pretrained(config, folder, stdout=False)
    return train_oracle(config, folder, timesteps=64, n_envs=2, stdout=False)


COMMANDS = ["train", "pretrained", "oracle"]


# -- naming ---------------------------------------------------------------------------------
def test_a_run_name_is_env_kind_seed_and_the_start_time():
    started = datetime(2026, 12, 2, 13, 5, 9)
    assert run_name("MAML/Navigation2D-v0", "oracle", 3) == "MAML-Navigation2D-v0__oracle__3"
    assert (
        run_name("my_module:User/Fam-v1", "maml", 0, started)
        == "User-Fam-v1__maml__0__20261202-130509"
    )
    assert re.fullmatch(f"MAML-Navigation2D-v0__test__3__{STAMP}", default_run_name(_config()))
    assert random_init_folder(_config(log_dir="runs")) == pathlib.Path(
        "runs/MAML-Navigation2D-v0__random-init__3"
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_generated_folder_names_of_train_and_the_baselines(tmp_path, command):
    folder = _start(command, None, _config(log_dir=str(tmp_path)))
    kind = {"train": "test"}.get(command, command)
    assert folder.parent == tmp_path
    assert re.fullmatch(f"MAML-Navigation2D-v0__{kind}__3__{STAMP}", folder.name), folder.name


def test_a_random_init_evaluation_without_runs_writes_into_its_named_folder(tmp_path, capsys):
    argv = ["evaluate", "--random-init", "--config", "navigation"]
    argv += ["--set", "hidden_sizes=[8]", "seed=5", f"log_dir={tmp_path}"]
    argv += ["--num-tasks", "1", "--num-steps", "1", "--env-steps", "100", "--no-plots"]
    assert main(argv) == 0
    folder = tmp_path / "MAML-Navigation2D-v0__random-init__5" / "evaluation"
    assert (folder / "returns.json").is_file()


# -- lifecycle ------------------------------------------------------------------------------
@pytest.mark.parametrize("command", COMMANDS)
def test_a_folder_holding_a_users_file_is_refused_before_anything_is_written(tmp_path, command):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a maml-rl run"):
        _start(command, folder, _config())
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]  # not even a lock


@pytest.mark.parametrize("command", COMMANDS)
def test_a_start_failing_in_its_first_step_leaves_no_folder(tmp_path, monkeypatch, command):
    from stable_baselines3 import PPO

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    if command == "oracle":  # after its first rollouts (and SB3's first log row)
        monkeypatch.setattr(PPO, "train", boom)
    else:
        monkeypatch.setattr("maml_rl.trainer.MAMLTrainer.run_iteration", boom)
    with pytest.raises(RuntimeError, match="boom"):
        _start(command, tmp_path / "new", _config())
    assert not (tmp_path / "new").exists()
    (tmp_path / "made").mkdir()  # a folder the user made is never removed
    with pytest.raises(RuntimeError, match="boom"):
        _start(command, tmp_path / "made", _config())
    assert (tmp_path / "made").is_dir()
    if command == "oracle":  # no oracle.zip, nothing to resume: it starts again there
        monkeypatch.undo()
        assert (_start(command, tmp_path / "made", _config()) / "oracle.zip").is_file()


_HOLD = """
import sys, time
from maml_rl.files import lock_run_folder
with lock_run_folder(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_command_into_a_locked_folder_is_one_line_and_exit_2(tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--config", "navigation", "--quiet", "--set", *TINY]
    oracle = ["--kind", "oracle", "--timesteps", "64", "--n-envs", "2"]
    commands = {
        "train": ["train", *common, f"log_dir={tmp_path}", "run_name=run"],
        "pretrained": ["baseline", "--kind", "pretrained", "--run-dir", str(run), *common],
        "oracle": ["baseline", *oracle, "--run-dir", str(run), *common],
    }
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(run)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        for name, argv in commands.items():
            assert main(argv) == 2, name
            err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
            assert err[-1].startswith("maml-rl: error: run folder "), (name, err)
            assert f"in use by process {holder.pid}" in err[-1], (name, err)
            assert [p.name for p in run.iterdir()] == [".lock"], name  # nothing written
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_the_lifecycle_keeps_what_is_worth_keeping(tmp_path):
    created = tmp_path / "created"
    with pytest.raises(RuntimeError), locked_run_folder(created, new=True) as made:
        assert made and (created / ".lock").is_file()
        raise RuntimeError
    assert not created.exists()  # only the lock in it: removed
    with pytest.raises(RuntimeError), locked_run_folder(created, new=True):
        (created / "oracle.zip").write_bytes(b"a result")
        raise RuntimeError
    assert (created / "oracle.zip").is_file()  # not ours: the folder stays
    held = tmp_path / "held"
    held.mkdir()  # the user's
    with locked_run_folder(held, new=True):
        with pytest.raises(RunFolderBusy), locked_run_folder(held, new=True):
            pass
        assert held.is_dir()  # the refused second holder removes nothing
    stale = held / "checkpoint.pt.x1.tmp"
    stale.write_bytes(b"partial")
    with locked_run_folder(held, new=False) as made:
        assert not made and not stale.exists()  # a killed write's temporary, removed
    assert held.is_dir()  # a folder this call did not create stays


def test_the_pretrained_marker_is_written_while_the_folder_is_locked(tmp_path, monkeypatch):
    from maml_rl import comparisons

    real = comparisons._write_marker
    seen = []

    def write_marker(run_dir, kind, **details):
        with pytest.raises(RunFolderBusy):
            check_not_busy(run_dir)
        seen.append(kind)
        real(run_dir, kind, **details)

    monkeypatch.setattr(comparisons, "_write_marker", write_marker)
    folder = train_pretrained(_config(), tmp_path / "pre", stdout=False)
    assert seen == ["pretrained"] and (folder / "baseline.yaml").is_file()


def test_a_command_refused_by_the_lock_removes_nothing(tmp_path, monkeypatch):
    """Two starts both see the folder missing; the one refused by the lock must not clean up
    the folder the other is running in (its removal happens under the lock only)."""
    import contextlib

    import maml_rl.run_folders as run_folders

    folder = tmp_path / "run"

    @contextlib.contextmanager
    def taken_by_another(path):
        path.mkdir()  # the other command got there first and wrote its config
        (path / "config.yaml").write_text("env_id: MAML/Navigation2D-v0\n")
        (path / ".lock").write_text("process 1\n")
        raise RunFolderBusy(f"{path} is in use by process 1")
        yield path  # pragma: no cover

    monkeypatch.setattr(run_folders, "lock_run_folder", taken_by_another)
    with pytest.raises(RunFolderBusy):
        with run_folders.locked_run_folder(folder, new=True):
            pass  # pragma: no cover
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "config.yaml"]


def test_a_pretrained_baseline_of_a_meta_sgd_config_has_no_step_sizes(tmp_path):
    folder = train_pretrained(_config(meta_sgd=True), tmp_path / "pretrained", stdout=False)
    assert (folder / "baseline.yaml").is_file()
