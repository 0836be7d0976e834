"""Config files and values: nothing expands, nothing escapes the run folder, every mistake is
one short line and exit 2 (docs/reliability.md, "Config files and values")."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

import pytest

from maml_rl.cli import main
from maml_rl.config import ConfigError, load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
BOMB = (
    "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
    "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
    "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
)


def _one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    err = [line for line in lines if not line.startswith("maml-rl: no --config")]
    assert len(err) == 1 and err[0].startswith("maml-rl: error: "), err
    return err[0]


def test_a_yaml_alias_is_refused_in_a_config_file_and_a_set_value(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB.replace("e: &e", "hidden_sizes:").replace("a: &a", "x: &a"))
    start = time.perf_counter()
    assert main(["train", "--config", str(path), "--set", f"log_dir={tmp_path}"]) == 2
    line = _one_line(capsys)
    assert "YAML alias (*a) is not allowed" in line and str(path) in line and "line 2" in line
    assert main(["train", "--set", "env_kwargs=[&x 1, *x]", f"log_dir={tmp_path}"]) == 2
    assert "alias" in _one_line(capsys)
    assert time.perf_counter() - start < 5 and list(tmp_path.iterdir()) == [path]


def test_bad_values_are_shown_bounded(tmp_path, capsys):
    assert main(["train", "--set", f"first_order=[{','.join(['12345'] * 500)}]"]) == 2
    line = _one_line(capsys)
    assert "'first_order'" in line and len(line) < 200
    with pytest.raises(ConfigError) as err:
        load_config(None, ["run_name=" + "x/" * 10000])
    assert len(str(err.value)) < 250
    with pytest.raises(ConfigError, match="unknown config key 'xxxxx") as err:
        load_config(None, ["x" * 100000 + "=1"])
    assert len(str(err.value)) < 250


def test_config_files_and_set_values_over_1_mib_are_refused_unread(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("meta_batch_size: 2\n" + "#" * (1 << 20) + "\n")
    with pytest.raises(ConfigError, match=r"big.yaml is \d+ bytes.*at most 1048576 bytes"):
        load_config(str(path))
    with pytest.raises(ConfigError, match=r"override 'run_name' is \d+ bytes.*1 MiB"):
        load_config(None, ["run_name=" + "x" * ((1 << 20) + 1)])
    with pytest.raises(ConfigError, match="nested deeper than 32 levels"):
        load_config(None, ["env_kwargs=" + "[" * 2000])


@pytest.mark.parametrize(
    "value", ["'../../x'", "/tmp/x", "a/b", "a\\b", "'..'", "'.'", "''", '"a\\0b"'], ids=repr
)
@pytest.mark.parametrize("key", ["run_name", "config_name"])
def test_run_and_config_names_are_one_folder_name(key, value):
    with pytest.raises(ConfigError, match=rf"bad value for '{key}'.*one folder name"):
        load_config(None, [f"{key}={value}"])  # values as YAML: "a\0b" holds a NUL


def test_a_shared_config_file_cannot_write_outside_log_dir(tmp_path, capsys):
    path = tmp_path / "shared.yaml"
    path.write_text("run_name: ../../escaped\nnum_iterations: 1\n")
    assert main(["train", "--config", str(path), "--set", f"log_dir={tmp_path / 'a' / 'b'}"]) == 2
    assert "'run_name'" in _one_line(capsys)
    assert not (tmp_path / "escaped").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("device=cudafoo", "'device': 'cudafoo' (cpu or cuda[:N])"),
        ("hidden_sizes=[true,true]", "'hidden_sizes'"),
        ("seed=100000000000000000000000", "'seed'"),
        ("seed=1.0e+23", "'seed'"),
        ("seed=4294967296", "'seed'"),
        ("max_kl=.inf", "'max_kl': inf (must be a finite number)"),
        ("cg_damping=.inf", "'cg_damping'"),
        ("inner_kl_coef=.inf", "'inner_kl_coef'"),
        ("ray_timeout_s=.inf", "'ray_timeout_s'"),
        ("init_std=.nan", "'init_std'"),
        ("outer_lr=1" + "0" * 400, "'outer_lr'"),
        ("torch_threads=1099511627776", "'torch_threads'"),
    ],
)
def test_bad_values_are_refused_in_validate(override, message):
    with pytest.raises(ConfigError, match="bad value for") as err:
        load_config("navigation", [override])
    assert message in str(err.value)


def test_the_largest_seed_and_cuda_indices_are_accepted():
    assert load_config(None, ["seed=4294967295"]).seed == 2**32 - 1
    assert load_config(None, ["device=cuda:1"]).device == "cuda:1"


@pytest.mark.parametrize(
    ("key", "close"),
    [("inner_rl", "did you mean 'inner_lr'?"), ("hiden_sizes", "'hidden_sizes'")],
)
def test_an_unknown_key_suggests_the_closest(key, close, capsys):
    assert main(["train", "--set", f"{key}=1"]) == 2
    line = _one_line(capsys)
    assert f"unknown config key '{key}'" in line and close in line
    assert "maml-rl train --help lists all keys" in line and "ray_timeout_s" not in line


def test_unknown_keys_that_are_not_strings_are_one_line(tmp_path):
    path = tmp_path / "odd.yaml"
    path.write_text("1: 2\nfoo: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 1 \(1 more unknown key\)"):
        load_config(str(path))


def test_a_run_too_big_for_memory_is_refused_at_start_up(monkeypatch):
    from maml_rl.family import TaskFamily
    from maml_rl.resources import check_memory

    config = load_config("navigation")
    family = TaskFamily.from_config(config)
    check_memory(config, family, None)  # the paper's navigation run fits
    monkeypatch.setattr("maml_rl.resources.available_memory", lambda: 100 * 2**20)
    with pytest.raises(ConfigError, match=r"at least 127 MiB of memory.*has 100 MiB available"):
        check_memory(config, family, None)


def test_a_cuda_index_beyond_the_gpus_is_one_line(monkeypatch):
    import torch

    from maml_rl.family import TaskFamily
    from maml_rl.resources import check_memory

    config = load_config("navigation", ["device=cuda:3"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(
        ConfigError, match=r"'device': 'cuda:3' \(torch sees 1 CUDA device: cuda:0\)"
    ):
        check_memory(config, TaskFamily.from_config(config), torch.device("cuda:3"))


def test_huge_sizes_are_one_line_not_a_memory_error(tmp_path):
    """In a subprocess under an 8 GiB address-space limit, so that a regression fails fast
    rather than filling the machine's memory."""
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))\n"
        "from maml_rl.cli import main\n"
        f"args = ['train', '--quiet', '--config', 'navigation', '--set', 'log_dir={tmp_path}']\n"
        "for size in ('hidden_sizes=[1000000,1000000]', 'meta_batch_size=100000000'):\n"
        "    print('rc', main([*args, size]), file=sys.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    err = done.stderr.strip().splitlines()
    assert err[1::2] == ["rc 2", "rc 2"], done.stderr[-2000:]
    for line in err[0::2]:
        assert line.startswith("maml-rl: error: this run needs at least"), line
        assert "of memory but this machine has" in line
    assert list(tmp_path.iterdir()) == []
