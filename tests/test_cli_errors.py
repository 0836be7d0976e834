"""Every user mistake is one line and exit 2; every failure of the run is one line and exit 1;
help and presets say what is there, fast."""

from __future__ import annotations

import errno
import os
import pathlib
import subprocess
import sys

import gymnasium as gym
import pytest

from maml_rl.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = [
    "num_iterations=1",
    "meta_batch_size=2",
    "episodes_per_task=2",
    "hidden_sizes=[8]",
    "progress_bar=false",
]


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "nothing on stderr"
    assert err[-1].startswith("maml-rl: error: ")
    return err[-1]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["first_order=yes-please"], "'first_order': 'yes-please' (must be true or false)"),
        (["progress_bar=1"], "'progress_bar'"),
        (["gamma=abc"], "'gamma': 'abc' (must be a number)"),
        (["device=3"], "'device'"),
        (["env_kwargs={hihg: 3}"], "bad env_kwargs {'hihg': 3} for MAML/Navigation2D-v0"),
        (["env_id=MAML/Navigaton2D-v0"], "Did you mean: `Navigation2D`?"),
        (["env_id=no_such_module_xyz:Foo-v0"], "cannot import the module of env id"),
    ],
)
def test_bad_values_are_one_line_and_exit_2(tmp_path, capsys, overrides, message):
    code = main(["train", "--quiet", "--set", *TINY, f"log_dir={tmp_path}", *overrides])
    assert code == 2
    assert message in _error(capsys)
    assert list(tmp_path.iterdir()) == []  # no empty run folder left


def test_unknown_env_id_lists_the_users_families(capsys, tmp_path):
    gym.register(id="UserFam/Thing-v0", entry_point="maml_envs.navigation:Navigation2DEnv")
    try:
        assert main(["train", "--set", "env_id=UserFam/Thin-v0", f"log_dir={tmp_path}"]) == 2
        line = _error(capsys)
    finally:
        gym.registry.pop("UserFam/Thing-v0")
    assert "'UserFam/Thing-v0'" in line and "'MAML/Navigation2D-v0'" in line
    assert "Did you mean: `Thing`?" in line


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text("meta_batch_size: 4\nhidden_sizes: [8, 8\n")
    assert main(["train", "--config", str(path)]) == 2
    line = _error(capsys)
    assert f"{path} is not valid YAML" in line and "line 3" in line


def test_evaluate_given_a_file_that_is_no_checkpoint(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("env_id: MAML/Navigation2D-v0\n")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    assert main(["evaluate", str(notes)]) == 2
    assert str(notes) in _error(capsys)


def test_a_corrupt_checkpoint_on_resume_names_the_file(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--quiet", "--set", *TINY, f"log_dir={tmp_path}", "run_name=run"]) == 0
    ckpt = run / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    assert f"{ckpt} is not a readable checkpoint" in _error(capsys)


def test_a_full_disk_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("maml_rl.run.atomic_write_text", full)
    assert main(["train", "--quiet", "--set", *TINY, f"log_dir={tmp_path}"]) == 1
    assert "No space left on device" in _error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_checkpoint_on_stop_does_not_hide_the_error(tmp_path, capsys, monkeypatch):
    from maml_rl.errors import UnusableBatchError

    def stop(trainer, result):
        raise UnusableBatchError("iteration 1, post-update batch: the environment returned NaN")

    def full(path, state):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("maml_rl.run.save_checkpoint", full)
    from maml_rl.config import load_config
    from maml_rl.run import train

    with pytest.raises(UnusableBatchError):
        train(load_config("navigation", [*TINY, f"log_dir={tmp_path}"]), callbacks=[stop])
    err = capsys.readouterr().err
    assert "could not be saved: [Errno 28] No space left on device" in err


def test_run_failures_are_one_line_and_exit_1(capsys, monkeypatch):
    from maml_rl.ray_sampler import RaySamplerError

    def fail(*args, **kwargs):
        raise RaySamplerError("Ray sampler: worker 0 failed 4 times\n  traceback line\n")

    monkeypatch.setattr("maml_rl.run.train", fail)
    assert main(["train", "--set", "progress_bar=false"]) == 1
    assert _error(capsys) == "maml-rl: error: Ray sampler: worker 0 failed 4 times traceback line"


def test_without_config_the_defaults_are_said_and_named(tmp_path, capsys):
    assert main(["train", "--quiet", "--set", *TINY, f"log_dir={tmp_path}"]) == 0
    assert "no --config: the keys --set does not give take their defaults" in (
        capsys.readouterr().err
    )
    (run,) = tmp_path.iterdir()
    assert "__default__" in run.name


def test_train_help_lists_every_key_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "first_order [False]: Drop second derivatives" in out
    assert "inner_lr [0.1]" in out and "env_import [null]" in out


def test_presets_say_what_each_is(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "halfcheetah-vel" in out and "40 tasks x 20 episodes" in out


def test_help_imports_no_torch():
    code = (
        "import sys\n"
        "from maml_rl.cli import build_parser\n"
        "build_parser().format_help()\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
