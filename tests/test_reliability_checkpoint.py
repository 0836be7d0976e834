"""A damaged, edited or crafted checkpoint is one line naming the file (exit 2) for evaluate and
for train --resume: never a traceback, never torch's advice to load with weights_only=False."""

from __future__ import annotations

import collections
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from maml_rl.checkpoint import load_checkpoint, save_checkpoint
from maml_rl.cli import main
from maml_rl.errors import CheckpointError
from maml_rl.run import load_policy, train
from tests.conftest import tiny_config

RESULTS = Path(__file__).resolve().parents[1] / "results"


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    """A real run of one iteration: a ~20 KB checkpoint."""
    config = tiny_config(
        meta_batch_size=2, episodes_per_task=2, hidden_sizes=[32, 32], num_iterations=1
    )
    return train(config, tmp_path_factory.mktemp("ckpt") / "run", stdout=False)


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".lock"))
    return copy


def _one_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("maml-rl: error: ")
    assert "Traceback" not in captured.err
    return lines[0]


def _refused_by_both(run: Path, capsys) -> str:
    """evaluate and train --resume of ``run``: both exit 2 with one line naming the file."""
    ckpt = str(run / "checkpoint.pt")
    code = main(["evaluate", str(run), "--num-tasks", "2", "--num-steps", "1", "--no-plots"])
    assert code == 2
    line = _one_line(capsys)
    assert ckpt in line, line
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    resumed = _one_line(capsys)
    assert ckpt in resumed, resumed
    return line + "\n" + resumed


# -- 1. crafted pickles ------------------------------------------------------------------------
class _System:
    """Unpickles as ``os.system(command)``: a GLOBAL of a blocked module plus REDUCE."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Ordered(collections.OrderedDict):
    """An OrderedDict subclass: a GLOBAL that is no allowed global."""


@pytest.mark.parametrize("kind", ["os.system", "OrderedDict subclass"])
def test_a_crafted_pickle_is_refused_naming_the_global(tmp_path, kind):
    marker = tmp_path / "pwned"
    payload: Any = _System(f"touch {marker}") if kind == "os.system" else _Ordered(a=1)
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": 2, "policy": {}, "config": {}, "iteration": 0, "x": payload}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path}: refused to load: it holds a '")
    name = "system" if kind == "os.system" else "_Ordered"
    assert name in message, message
    assert "weights_only" not in message and "\n" not in message
    assert not marker.exists()


# -- 2. truncated, edited and foreign checkpoints ----------------------------------------------
@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.75, 0.95])
def test_a_truncated_real_checkpoint_is_one_line_naming_the_file(
    small_run, tmp_path, capsys, fraction
):
    run = _copy(small_run, tmp_path)
    path = run / "checkpoint.pt"
    data = path.read_bytes()
    assert len(data) > 10_000
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    assert "truncated or corrupt" in _refused_by_both(run, capsys)


def _edit_policy_shape(state):
    state["policy"]["layers.0.weight"] = torch.zeros(3, 3)


def _unknown_policy_key(state):
    state["policy"]["layers.9.weight"] = torch.zeros(2)


def _missing_policy_key(state):
    del state["policy"]["log_std"]


def _policy_is_a_list(state):
    state["policy"] = list(state["policy"].values())


def _policy_holds_a_number(state):
    state["policy"]["log_std"] = 0.5


def _config_is_a_list(state):
    state["config"] = [1, 2]


def _set(key, value):
    def edit(state):
        state[key] = value

    edit.__name__ = f"{key}={value!r}"
    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            _edit_policy_shape,
            "'layers.0.weight' has shape [3, 3], the policy of its config [32, 2]",
        ),
        (_unknown_policy_key, "'layers.9.weight'"),
        (_missing_policy_key, "'log_std'"),
        (_policy_is_a_list, "policy is a list"),
        (_policy_holds_a_number, "'log_std' is a float"),
        (_config_is_a_list, "config is a list"),
        (_set("format", 0), "format 0"),
        (_set("format", 99), "format 99"),
        (_set("format", "2"), "format '2'"),
        (_set("format", True), "format True"),
        (_set("iteration", -5), "iteration -5"),
        (_set("iteration", 1.5), "iteration 1.5"),
        (_set("iteration", "1"), "iteration '1'"),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_an_edited_checkpoint_is_one_line_for_evaluate_and_resume(
    small_run, tmp_path, capsys, edit, message
):
    run = _copy(small_run, tmp_path)
    state = load_checkpoint(run)
    edit(state)
    save_checkpoint(run / "checkpoint.pt", state)
    lines = _refused_by_both(run, capsys)
    assert lines.count(message) == 2, lines


def _short_torch_rng(state):
    state["torch_rng"] = state["torch_rng"][:100]


def _torch_rng_of_floats(state):
    state["torch_rng"] = state["torch_rng"].float()


def _short_numpy_keys(state):
    state["numpy_rng"]["keys"] = state["numpy_rng"]["keys"][:10]


def _numpy_rng_is_a_string(state):
    state["numpy_rng"] = "MT19937"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_short_torch_rng, "torch_rng"),
        (_torch_rng_of_floats, "torch_rng"),
        (_short_numpy_keys, "numpy_rng"),
        (_numpy_rng_is_a_string, "numpy_rng"),
        (_set("env_steps", -1), "env_steps -1"),
        (_set("torch_rng", None), "torch_rng"),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_a_broken_training_state_is_one_line_for_resume(small_run, tmp_path, capsys, edit, message):
    run = _copy(small_run, tmp_path)
    state = load_checkpoint(run)
    edit(state)
    save_checkpoint(run / "checkpoint.pt", state)
    before = (run / "progress.csv").read_bytes()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    line = _one_line(capsys)
    assert str(run / "checkpoint.pt") in line and message in line, line
    assert (run / "progress.csv").read_bytes() == before


def test_a_valid_checkpoint_still_loads_and_resumes(small_run, tmp_path, capsys):
    run = _copy(small_run, tmp_path)
    meta, _ = load_policy(run)
    reference = torch.load(run / "checkpoint.pt", weights_only=False)
    assert all(torch.equal(meta.state_dict()[k], v) for k, v in reference["policy"].items())
    assert main(["train", "--resume", str(run), "--quiet", "--set", "num_iterations=2"]) == 0
    assert load_checkpoint(run)["iteration"] == 2


@pytest.mark.parametrize("name", ["navigation", "maml-family/navigation/variants/meta-sgd-s1"])
def test_committed_checkpoints_pass_the_checks(name):
    path = RESULTS / name / "checkpoint.pt"
    if not path.is_file():
        pytest.skip(f"no {path}")
    meta, _ = load_policy(path)
    reference = torch.load(path, map_location="cpu", weights_only=False)  # trusted: ours
    assert all(torch.equal(meta.state_dict()[k], v) for k, v in reference["policy"].items())


def test_adam_moments_that_do_not_fit_the_policy_are_one_line_for_resume(tmp_path, capsys):
    config = tiny_config(
        algorithm="maml-ppo",
        meta_batch_size=2,
        episodes_per_task=2,
        hidden_sizes=[8],
        num_iterations=1,
    )
    run = train(config, tmp_path / "run", stdout=False)
    state = load_checkpoint(run)
    state["meta_optimizer"]["adam_exp_avg"] = state["meta_optimizer"]["adam_exp_avg"][:-1]
    save_checkpoint(run / "checkpoint.pt", state)
    assert main(["train", "--resume", str(run), "--quiet", "--set", "num_iterations=2"]) == 2
    line = _one_line(capsys)
    assert str(run / "checkpoint.pt") in line and "adam_exp_avg" in line, line
