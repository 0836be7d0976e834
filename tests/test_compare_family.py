"""The MAML-family comparison (``maml-rl compare``, maml_rl/compare.py): smoothing, time to
target and the summary by hand on written progress files, and one run of the whole command on
tiny runs."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from maml_rl import cli
from maml_rl.compare import (
    collect,
    markdown,
    seconds_to_reach,
    smooth,
    summarise,
    train_command,
)
from maml_rl.run import train
from tests.conftest import tiny_config


def main(argv: list[str]) -> int:
    """``maml-rl compare ARGV``."""
    return cli.main(["compare", *argv])


FAMILY_RESULTS = Path(__file__).resolve().parents[1] / "results" / "maml-family"


def _write_run(root: Path, name: str, returns: list[float], seconds: float) -> Path:
    """A run folder with a progress.csv: 100 env steps and ``seconds`` per iteration."""
    run = root / name
    run.mkdir(parents=True)
    keys = ["time/iteration", "rollout/post_return_mean", "time/env_steps", "time/iteration_s"]
    with open(run / "progress.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(keys)
        for i, r in enumerate(returns, 1):
            writer.writerow([i, r, 100 * i, seconds])
    return run


def test_trailing_moving_mean_by_hand():
    np.testing.assert_allclose(smooth(np.array([1.0, 2.0, 3.0, 4.0]), 2), [1.0, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(smooth(np.array([3.0, 6.0, 9.0]), 5), [3.0, 4.5, 6.0])


def test_summary_target_and_seconds_to_reach_it_by_hand(tmp_path):
    _write_run(tmp_path, "maml-trpo-s1", [-10, -8, -6, -4], 2.0)  # smoothed (w 2): -5 at the end
    _write_run(tmp_path, "maml-trpo-s2", [-10, -9, -8, -7], 2.0)  # -7.5
    _write_run(tmp_path, "first-order-s1", [-9, -5, -5, -5], 1.0)  # smoothed -9, -7, -5, -5
    _write_run(tmp_path, "notes", [], 1.0).joinpath("progress.csv").unlink()  # ignored
    curves = collect(tmp_path)
    assert list(curves) == ["maml-trpo", "first-order"]  # VARIANTS order
    summary = summarise(curves, window=2)
    assert summary["target"] == pytest.approx(-6.25)  # mean of -5 and -7.5
    trpo, fo = summary["variants"]["maml-trpo"], summary["variants"]["first-order"]
    assert trpo["seconds_to_target"] == [8.0, None]  # s1 reaches -5 >= -6.25 at iteration 4
    assert fo["seconds_to_target"] == [3.0]  # -5 >= -6.25 first at iteration 3, 3 s
    assert fo["final_return"] == pytest.approx(-5.0) and fo["wall_s"] == pytest.approx(4.0)
    assert trpo["final_return_sd"] == pytest.approx(np.std([-5.0, -7.5], ddof=1))
    assert seconds_to_reach(curves["first-order"][0], 0.0, 2) is None
    table = markdown(summary, None).splitlines()
    assert table[2].startswith("| MAML-TRPO | 2 | 4 | -6.25 ± 1.77 | 8 | 8 (1/2) |")
    assert table[3].startswith(
        "| first-order MAML-TRPO | 1 | 4 | -5.00 | 4 | 3 (1/1) |"
    )  # one seed: no sd
    # timed alone at 0.5 and 3 s per iteration: iterations to target (4 and 3) times the rate
    timed = summarise(curves, window=2, timed={"maml-trpo": 0.5, "first-order": 3.0})
    assert timed["variants"]["maml-trpo"]["iterations_to_target"] == [4, None]
    assert timed["variants"]["maml-trpo"]["timed_seconds_to_target"] == [2.0, None]
    assert timed["variants"]["first-order"]["timed_seconds_to_target"] == [9.0]
    rows = markdown(timed, None).splitlines()
    assert rows[0].endswith("| s/iteration alone | s to target alone |")
    assert rows[3].endswith("| 3 (1/1) | 3.00 | 9 (1/1) |")


def test_bad_run_folders_are_named(tmp_path):
    _write_run(tmp_path, "maml-sgd-s1", [1.0], 1.0)
    with pytest.raises(ValueError, match="unknown variant 'maml-sgd'"):
        collect(tmp_path)
    other = tmp_path / "other"
    _write_run(other, "trpo_seed1", [1.0], 1.0)
    with pytest.raises(ValueError, match="named <variant>-s<seed>"):
        collect(other)
    with pytest.raises(ValueError, match="no maml-trpo-s<seed> run: --runs takes the folder"):
        summarise({}, 2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--runs", "{tmp}/missing", "--out", "{tmp}/o"], "--runs .*missing: no such folder"),
        (["--runs", "{tmp}/bad", "--out", "{tmp}/o"], "run folders are named <variant>-s<seed>"),
        (["--runs", "{tmp}/bad", "--out", "{tmp}/o", "--time-iterations", "1"], "0 or >= 2"),
        (["--print-commands", "--config", "navigaton"], "'navigaton': not a preset"),
    ],
)
def test_user_mistakes_are_one_line(tmp_path, capsys, args, message):
    _write_run(tmp_path / "bad", "trpo_seed1", [1.0], 1.0)
    with pytest.raises(SystemExit) as exit_info:
        main([a.replace("{tmp}", str(tmp_path)) for a in args])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    error = stderr.strip().splitlines()[-1]
    assert error.startswith("maml-rl compare: error:") and re.search(message, error), error


@pytest.mark.parametrize("task", ["navigation", "halfcheetah-dir-rllab"])
def test_committed_comparison_redraws_with_reuse(tmp_path, task):
    """``--reuse`` the committed comparison.json: the committed table again, from the
    committed runs' progress files, without timing or evaluating."""
    folder = FAMILY_RESULTS / task
    args = ["--runs", str(folder / "variants"), "--out", str(tmp_path)]
    assert main([*args, "--reuse", str(folder / "comparison.json")]) == 0
    assert (tmp_path / "comparison.md").read_text() == (folder / "comparison.md").read_text()
    assert (tmp_path / "return_vs_wall_seconds.png").stat().st_size > 10_000


def test_train_commands_make_each_variant():
    command = train_command("promp", "navigation", 2, "runs/cmp")
    assert "--set seed=2 algorithm=promp inner_objective=lvc log_dir=runs/cmp" in command
    assert "run_name=promp-s2" in command


def test_the_command_on_tiny_runs(tmp_path, capsys):
    sizes = dict(meta_batch_size=4, episodes_per_task=4, hidden_sizes=[16], num_iterations=2)
    for name, keys in (("maml-trpo", {}), ("meta-sgd", {"meta_sgd": True})):
        train(tiny_config(**sizes, **keys), tmp_path / "runs" / f"{name}-s1", stdout=False)
    out = tmp_path / "out"
    args = ["--runs", str(tmp_path / "runs"), "--out", str(out), "--eval-tasks", "2"]
    assert main([*args, "--time-iterations", "2"]) == 0
    result = json.loads((out / "comparison.json").read_text())
    evaluation = result["evaluation"]["meta-sgd"]
    assert len(evaluation["mean"]) == 4 and len(evaluation["per_seed"]) == 1
    assert (out / "return_vs_env_steps.png").stat().st_size > 10_000
    assert (out / "return_vs_wall_seconds.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "| Meta-SGD-TRPO | 1 | 2 |" in printed and "target:" in printed
    rate = result["summary"]["variants"]["meta-sgd"]["timed_s_per_iteration"]
    assert 0 < rate < 60


COMMITTED_RUNS = sorted(
    (task.name, run.name)
    for task in FAMILY_RESULTS.glob("*")
    for run in (task / "variants").glob("*-s1")
    if (run / "checkpoint.pt").is_file()
)


@pytest.mark.slow
@pytest.mark.parametrize(("task", "run"), COMMITTED_RUNS)
def test_committed_comparison_policy_reaches_its_recorded_return(task, run):
    """Each committed seed-1 policy of the comparison, evaluated again at 1 step, gives the
    1-step test return comparison.json records for it."""
    from maml_rl.evaluation import evaluate_method, load_method, sample_test_tasks
    from maml_rl.report import EvalSettings

    recorded = json.loads((FAMILY_RESULTS / task / "comparison.json").read_text())["evaluation"]
    variant, seed = run.rsplit("-s", 1)
    per_seed = dict(zip(recorded_seeds(task, variant), recorded[variant]["per_seed"]))
    method = load_method(FAMILY_RESULTS / task / "variants" / run)
    settings = EvalSettings(
        num_tasks=recorded["num_tasks"], num_steps=1, test_tasks=recorded["test_tasks"]
    )
    tasks = sample_test_tasks(method.config, settings.num_tasks, settings.seed, settings.test_tasks)
    now = float(evaluate_method(method, tasks, settings).returns.mean(axis=1)[1])
    expected = per_seed[int(seed)][1]
    assert abs(now - expected) <= max(0.02 * abs(expected), 0.5), (now, expected)


def recorded_seeds(task: str, variant: str) -> list[int]:
    summary = json.loads((FAMILY_RESULTS / task / "comparison.json").read_text())["summary"]
    return summary["variants"][variant]["seeds"]


def test_compare_is_a_subcommand_with_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compare", "--help"])
    assert exit_info.value.code == 0
    assert "--time-iterations" in capsys.readouterr().out
    assert main(["--print-commands", "--config", "navigation", "--seeds", "4"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 6 and "run_name=maml-trpo-s4" in printed[0]
