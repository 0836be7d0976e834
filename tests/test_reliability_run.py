"""Signals, pipes and run folders: every stop keeps the last completed iteration, nothing is
written outside log_dir or over a user's files, and no option is silently ignored."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import yaml

from maml_rl import run as run_module
from maml_rl.checkpoint import load_checkpoint
from maml_rl.cli import main
from maml_rl.config import TrainConfig
from maml_rl.errors import ConfigError
from maml_rl.logger import read_progress
from maml_rl.run import resume, train
from maml_rl.run_folders import remove_unused_run_folder
from tests.conftest import SMALL_ARGS, SMALL_SIZES, tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
IT = "time/iteration"
TINY = SMALL_ARGS


def _config(**overrides) -> TrainConfig:
    sizes = dict(SMALL_SIZES, num_iterations=2, checkpoint_every=1000)
    return tiny_config(**{**sizes, **overrides})


def _iterations(run: pathlib.Path) -> list[int]:
    return [int(r[IT]) for r in read_progress(run / "progress.csv")[1]]


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("maml-rl: error: "), err
    return err[0]


def _files(folder: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# -- signals ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_during_the_stop_cannot_cancel_the_checkpoint(
    tmp_path, capsys, monkeypatch, sig
):
    """The probe's double SIGTERM / double Ctrl-C after 3 iterations: the second signal lands
    inside the checkpoint write of the first. The checkpoint is written, the folder stays."""
    real_save = run_module.save_checkpoint

    def save_hit_by_a_second_signal(path, state):
        os.kill(os.getpid(), sig)
        return real_save(path, state)

    def first_signal(trainer, result):
        if trainer.iteration == 3:
            os.kill(os.getpid(), sig)

    monkeypatch.setattr(run_module, "save_checkpoint", save_hit_by_a_second_signal)
    run = tmp_path / "runs" / "sig"
    config = _config(num_iterations=50, log_dir=str(tmp_path / "runs"), run_name="sig")
    monkeypatch.setattr("maml_rl.cli.load_config", lambda *a, **k: config)
    real_train = run_module.train
    monkeypatch.setattr(
        run_module, "train", lambda c, **kw: real_train(c, callbacks=[first_signal], **kw)
    )
    assert main(["train", "--quiet", "--config", "patched"]) == 130
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "checkpoint of iteration 3 saved" in err[0], err
    assert signal.Signals(sig).name in err[0]
    assert load_checkpoint(run)["iteration"] == 3
    assert _iterations(run) == [1, 2, 3]
    monkeypatch.setattr(run_module, "save_checkpoint", real_save)
    resume(run, {"num_iterations": 4}, stdout=False)
    assert _iterations(run) == [1, 2, 3, 4]


_CHILD = """
import signal, sys
for name in ("SIGTERM", "SIGHUP", "SIGQUIT"):  # as in a terminal session, whatever ran pytest
    signal.signal(getattr(signal, name), signal.SIG_DFL)
signal.signal(signal.SIGINT, signal.default_int_handler)
from maml_rl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _child(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, *args], env=env, text=True, stderr=subprocess.PIPE, **kwargs
    )


def _wait_for_rows(run: pathlib.Path, n: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if len(read_progress(run / "progress.csv")[1]) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {n} rows in time (exit {proc.poll()})")


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGQUIT])
def test_hangup_and_quit_stop_the_run_with_a_checkpoint(tmp_path, sig):
    run = tmp_path / "r"
    proc = _child(
        [
            "train",
            "--quiet",
            "--config",
            "navigation",
            "--set",
            *TINY,
            "num_iterations=100000",
            "checkpoint_every=100000",
            f"log_dir={tmp_path}",
            "run_name=r",
        ],
        stdout=subprocess.DEVNULL,
    )
    _wait_for_rows(run, 2, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "checkpoint of iteration" in lines[0], err
    done = load_checkpoint(run)["iteration"]
    assert done >= 2 and _iterations(run) == list(range(1, done + 1))
    assert (
        main(["train", "--resume", str(run), "--quiet", "--set", f"num_iterations={done + 1}"]) == 0
    )
    assert _iterations(run) == list(range(1, done + 2))


def test_previous_handlers_come_back_and_an_ignored_hangup_stays_ignored(tmp_path):
    seen = {}

    def mine(signum, frame):
        pass

    def look(trainer, result):
        seen["hup"] = signal.getsignal(signal.SIGHUP)
        seen["term"] = signal.getsignal(signal.SIGTERM)

    before = signal.signal(signal.SIGTERM, mine), signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        train(_config(num_iterations=1), tmp_path / "r", stdout=False, callbacks=[look])
        assert seen["hup"] is signal.SIG_IGN  # nohup: the user asked to survive the terminal
        assert seen["term"] is not mine  # handled as Ctrl-C during the run
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGHUP, before[1])


def test_a_folder_with_logged_iterations_is_never_removed(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "progress.csv").write_text(f"{IT},a\n1,10\n")
    remove_unused_run_folder(folder)
    assert (folder / "progress.csv").is_file()


# -- a closed pipe ---------------------------------------------------------------------------
def test_a_closed_stdout_pipe_stops_the_table_not_the_run(tmp_path):
    """`maml-rl train | head -3`: the training goes on, progress.csv has every row."""
    run = tmp_path / "p"
    proc = _child(
        [
            "train",
            "--config",
            "navigation",
            "--set",
            *TINY,
            "num_iterations=40",
            f"log_dir={tmp_path}",
            "run_name=p",
        ],
        stdout=subprocess.PIPE,
    )
    for _ in range(3):
        proc.stdout.readline()
    proc.stdout.close()  # what head does after 3 lines
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "stdout" in err and "Traceback" not in err and "Exception ignored" not in err, err
    assert load_checkpoint(run)["iteration"] == 40
    assert _iterations(run) == list(range(1, 41))
    resume(run, {"num_iterations": 41}, stdout=False)
    assert _iterations(run) == list(range(1, 42))


# -- resume: folders and options -------------------------------------------------------------
def test_resume_of_a_folder_that_holds_no_run_writes_nothing_in_it(tmp_path, capsys):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    assert main(["train", "--resume", str(folder), "--quiet"]) == 2
    assert "no run" in _error_line(capsys)
    assert _files(folder) == {"notes.txt": b"mine"}


@pytest.fixture(scope="module")
def done_run(tmp_path_factory) -> pathlib.Path:
    return train(_config(num_iterations=2), tmp_path_factory.mktemp("done") / "r", stdout=False)


def test_resume_refuses_config(done_run, capsys):
    assert main(["train", "--resume", str(done_run), "--config", "navigation", "--quiet"]) == 2
    assert "--config" in _error_line(capsys)
    assert load_checkpoint(done_run)["iteration"] == 2


def test_resume_below_the_reached_iteration_is_an_error_and_equal_says_so(done_run, capsys):
    before = (done_run / "checkpoint.pt").read_bytes()
    code = main(["train", "--resume", str(done_run), "--quiet", "--set", "num_iterations=1"])
    assert code == 2
    assert "num_iterations=1" in _error_line(capsys)
    assert main(["train", "--resume", str(done_run), "--quiet"]) == 0
    assert "already has its 2 iterations" in capsys.readouterr().err
    assert (done_run / "checkpoint.pt").read_bytes() == before


def test_resume_rewrites_config_yaml_with_the_new_iteration_count(tmp_path):
    run = train(_config(num_iterations=1), tmp_path / "r", stdout=False)
    resume(run, {"num_iterations": 2}, stdout=False)
    assert yaml.safe_load((run / "config.yaml").read_text())["num_iterations"] == 2
    assert load_checkpoint(run)["config"]["num_iterations"] == 2


# -- where a run may go ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../escaped", "ABSOLUTE", "a/../../escaped", "."])
def test_run_name_must_stay_inside_log_dir(tmp_path, name):
    log_dir = tmp_path / "runs"
    outside = tmp_path / "escaped"
    name = str(outside) if name == "ABSOLUTE" else name
    config = dataclasses.replace(_config(log_dir=str(log_dir)), run_name=name)  # unvalidated
    with pytest.raises(ConfigError, match="run_name"):
        train(config, stdout=False)
    assert not outside.exists() and not (log_dir / "progress.csv").exists()


def test_an_absolute_run_name_at_a_users_folder_is_one_line_and_touches_nothing(tmp_path, capsys):
    users = tmp_path / "mine"
    users.mkdir()
    (users / "progress.csv").write_text("my,own\n1,2\n")
    (users / "config.yaml").write_text("mine: true\n")
    before = _files(users)
    code = main(
        [
            "train",
            "--quiet",
            "--config",
            "navigation",
            "--set",
            *TINY,
            "num_iterations=1",
            f"log_dir={tmp_path / 'runs'}",
            f"run_name={users}",
        ]
    )
    assert code == 2
    assert "run_name" in _error_line(capsys)
    assert _files(users) == before


def test_a_fresh_run_never_writes_into_a_users_folder(tmp_path):
    users = tmp_path / "mine"
    users.mkdir()
    (users / "progress.csv").write_text("my,own\n1,2\n")
    (users / "config.yaml").write_text("mine: true\n")
    before = _files(users)
    with pytest.raises(FileExistsError, match="not a maml-rl run"):
        train(_config(num_iterations=1), users, stdout=False)
    with pytest.raises(FileExistsError, match="not a maml-rl run"):
        train(_config(num_iterations=1, log_dir=str(tmp_path), run_name="mine"), stdout=False)
    assert _files(users) == before
    leftover = tmp_path / "leftover"  # a start of ours killed before its first iteration
    train(_config(num_iterations=1), leftover, stdout=False)
    (leftover / "checkpoint.pt").unlink()
    (leftover / "progress.csv").write_text("")
    assert train(_config(num_iterations=1), leftover, stdout=False) == leftover
