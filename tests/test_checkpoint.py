"""Checkpoints load without unpickling code, old ones still load, bad files give one line."""

from __future__ import annotations

import builtins
import glob
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from maml_rl.checkpoint import (
    load_checkpoint,
    numpy_rng_from_plain,
    numpy_rng_to_plain,
    save_checkpoint,
)
from maml_rl.errors import CheckpointError
from maml_rl.files import remove_stale_temporaries

ROOT = pathlib.Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this creates ``marker``: proof that loading ran code."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def test_a_crafted_checkpoint_is_refused_without_running_its_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    torch.save({"policy": {}, "config": {}, "iteration": 0, "x": _Payload(marker)}, path)
    refused = r"checkpoint\.pt: refused to load: it holds a 'io\.open' object"
    with pytest.raises(CheckpointError, match=refused):
        load_checkpoint(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a maml-rl checkpoint|not a readable checkpoint"),
        (b"env_id: x\n", "not a maml-rl checkpoint|not a readable checkpoint"),
    ],
)
def test_a_file_that_is_no_checkpoint_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "progress.csv"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_truncated_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"policy": {"w": torch.ones(100)}, "config": {}, "iteration": 1})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    torch.save([1, 2], path)  # readable, but not ours
    with pytest.raises(CheckpointError, match="not a maml-rl checkpoint"):
        load_checkpoint(path)


def test_numpy_rng_state_round_trips_as_plain_data(tmp_path):
    np.random.seed(5)
    np.random.standard_normal()  # leaves a cached gaussian half
    state = np.random.get_state()
    path = tmp_path / "checkpoint.pt"
    plain = numpy_rng_to_plain(state)
    save_checkpoint(path, {"policy": {}, "config": {}, "iteration": 0, "rng": plain})
    torch.load(path, weights_only=True)  # plain: no allow-list needed
    restored = numpy_rng_from_plain(load_checkpoint(path)["rng"])
    expected = np.random.standard_normal(5)
    np.random.set_state(restored)
    np.testing.assert_array_equal(np.random.standard_normal(5), expected)


@pytest.mark.parametrize("path", sorted(glob.glob(str(ROOT / "results/*/checkpoint.pt"))))
def test_committed_checkpoints_load_safely_and_unchanged(path):
    """Format 1 (the numpy RNG state as an array) and format 2 (as plain data) alike."""
    state = load_checkpoint(path)
    reference = torch.load(path, map_location="cpu", weights_only=False)  # trusted: ours
    assert state["iteration"] == reference["iteration"] and state["config"] == reference["config"]
    assert all(torch.equal(state["policy"][k], v) for k, v in reference["policy"].items())
    a = numpy_rng_from_plain(state["numpy_rng"])
    b = numpy_rng_from_plain(reference["numpy_rng"])
    assert a[0] == b[0] and a[2:] == tuple(b[2:]) and np.array_equal(a[1], b[1])
    assert a[1].dtype == np.uint32


_SLOW_SAVE = """
import sys, time, torch
from maml_rl.checkpoint import save_checkpoint

class Slow:
    def __init__(self, f):
        self.f = f
    def write(self, b):
        self.f.write(b); self.f.flush(); time.sleep(0.05)
        return len(b)
    def __getattr__(self, name):
        return getattr(self.f, name)

real_save = torch.save
torch.save = lambda obj, f: real_save(obj, Slow(f), _use_new_zipfile_serialization=False)
print("writing", flush=True)
save_checkpoint(sys.argv[1], {"policy": {"w": torch.zeros(200_000)}, "config": {}, "iteration": 2})
"""


def test_kill_9_inside_a_checkpoint_write_keeps_the_old_one_and_cleans_up(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"policy": {"w": torch.ones(3)}, "config": {}, "iteration": 1})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_SAVE, str(path)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "writing"
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob("checkpoint.pt.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # mid-write
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    stale = list(tmp_path.glob("checkpoint.pt.*.tmp"))
    assert stale, "the kill should have hit the write"
    assert load_checkpoint(path)["iteration"] == 1  # the old checkpoint, intact
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert not list(tmp_path.glob("*.tmp"))
