"""Oracle archives load without unpickling, and act exactly as stable-baselines3's load."""

from __future__ import annotations

import base64
import builtins
import json
import pathlib
import shutil
import zipfile

import cloudpickle
import numpy as np
import pytest
import torch

from maml_rl.comparisons import load_oracle

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAV_ORACLE = ROOT / "results" / "navigation-oracle"


class _Payload:
    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def _crafted_copy(tmp_path: pathlib.Path, marker: pathlib.Path) -> pathlib.Path:
    """The committed oracle with a code-running pickle in the archive's ``data``."""
    folder = tmp_path / "oracle"
    shutil.copytree(NAV_ORACLE, folder)
    src = folder / "oracle.zip"
    with zipfile.ZipFile(src) as z:
        entries = {name: z.read(name) for name in z.namelist()}
    data = json.loads(entries["data"])
    payload = base64.b64encode(cloudpickle.dumps(_Payload(marker))).decode()
    data["observation_space"] = {":type:": "x", ":serialized:": payload}
    entries["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(src, "w") as z:
        for name, content in entries.items():
            z.writestr(name, content)
    return folder


def test_a_crafted_oracle_archive_runs_no_code(tmp_path):
    from stable_baselines3.common.save_util import load_from_zip_file

    marker = tmp_path / "pwned"
    folder = _crafted_copy(tmp_path, marker)
    policy, _ = load_oracle(folder)
    assert policy is not None and not marker.exists()
    load_from_zip_file(folder / "oracle.zip")  # what PPO.load does first: it runs the payload
    assert marker.exists()


def test_the_rebuilt_policy_acts_as_stable_baselines3_loads_it():
    from stable_baselines3 import PPO

    policy, _ = load_oracle(NAV_ORACLE)
    model = PPO.load(NAV_ORACLE / "oracle.zip", device="cpu")
    theirs = model.policy.state_dict()
    assert policy.state_dict().keys() == theirs.keys()
    assert all(torch.equal(v, theirs[k]) for k, v in policy.state_dict().items())
    obs = np.random.default_rng(0).uniform(-0.5, 0.5, size=(16, 4)).astype(np.float32)
    for deterministic in (True, False):
        torch.manual_seed(3)
        a, _ = policy.predict(obs, deterministic=deterministic)
        torch.manual_seed(3)
        b, _ = model.predict(obs, deterministic=deterministic)
        np.testing.assert_array_equal(a, b)


def test_pickled_policy_kwargs_are_refused_with_one_line(tmp_path):
    from maml_rl.errors import CheckpointError

    folder = _crafted_copy(tmp_path, tmp_path / "unused")
    src = folder / "oracle.zip"
    with zipfile.ZipFile(src) as z:
        entries = {name: z.read(name) for name in z.namelist()}
    data = json.loads(entries["data"])
    data["policy_kwargs"] = {":type:": "dict", ":serialized:": "AAAA"}
    entries["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(src, "w") as z:
        for name, content in entries.items():
            z.writestr(name, content)
    with pytest.raises(CheckpointError, match="policy_kwargs are pickled objects"):
        load_oracle(folder)


def test_an_interrupted_oracle_training_leaves_no_folder_and_locks_it(tmp_path, monkeypatch):
    from stable_baselines3 import PPO

    from maml_rl.comparisons import train_oracle
    from maml_rl.config import TrainConfig

    def interrupted(self, *args, **kwargs):
        assert (tmp_path / "o" / ".lock").is_file()
        raise KeyboardInterrupt

    monkeypatch.setattr(PPO, "learn", interrupted)
    config = TrainConfig(hidden_sizes=[8]).validate()
    with pytest.raises(KeyboardInterrupt):
        train_oracle(config, tmp_path / "o", timesteps=64, n_envs=2, stdout=False)
    assert not (tmp_path / "o").exists()
