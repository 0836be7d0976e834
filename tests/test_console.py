"""What the console says around training: the run folder at the start, the busy-machine hint."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from maml_rl.run import BusyMachineHint, train
from tests.conftest import tiny_config


def test_training_names_its_run_folder_at_the_start(tmp_path, capsys):
    config = tiny_config(meta_batch_size=2, episodes_per_task=2, hidden_sizes=[8], num_iterations=1)
    run_dir = train(config, tmp_path / "run", stdout=True)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"run folder: {run_dir} (iterations 1 to 1)"
    train(config, tmp_path / "quiet", stdout=False)
    assert capsys.readouterr().out == ""


def _hint(capsys, load: float, threads: int, iterations: int = 1) -> list[str]:
    hint = BusyMachineHint(load=lambda: load, cores=2, interactive=True)
    trainer = SimpleNamespace(iteration=1)
    result = SimpleNamespace(iteration_s=12.5)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(iterations):
            hint.on_iteration(trainer, result)
    finally:
        torch.set_num_threads(previous)
    return capsys.readouterr().err.splitlines()


def test_a_busy_machine_gets_one_hint_about_torch_threads(capsys):
    lines = _hint(capsys, load=4.2, threads=2, iterations=3)
    assert lines == [
        "maml-rl: hint: the machine is busy (load 4.2 on 2 cores) and torch uses 2 threads; on a "
        "shared machine --set torch_threads=1 is often faster (iteration 1 took 12.5 s)"
    ]


@pytest.mark.parametrize(
    ("load", "threads"),
    [(2.9, 2), (4.2, 1)],  # the run's own load on 2 cores; one torch thread already
)
def test_no_hint_for_the_runs_own_load_or_one_torch_thread(capsys, load, threads):
    assert _hint(capsys, load=load, threads=threads) == []


def test_no_hint_when_stderr_is_not_a_terminal(capsys):
    hint = BusyMachineHint(load=lambda: 9.0, cores=2, interactive=False)
    hint.on_iteration(SimpleNamespace(iteration=1), SimpleNamespace(iteration_s=1.0))
    assert capsys.readouterr().err == ""
