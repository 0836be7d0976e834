"""The authors' fixed test tasks (cbfinn/maml_rl test_maml_*.py) and ``--test-tasks authors``."""

import json

import numpy as np
import pytest

import maml_envs  # noqa: F401  (registers the families)
from maml_envs import Direction, GoalVelocity
from maml_rl.authors_tasks import authors_test_tasks, has_authors_test_tasks
from maml_rl.cli import main
from maml_rl.config import TrainConfig
from maml_rl.evaluation import sample_test_tasks


def _legacy_global_draw(seed: int, high: float) -> np.ndarray:
    """What the authors' scripts ran: np.random.seed(seed); np.random.uniform(0, high, 40)."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        return np.random.uniform(0.0, high, size=(40,))
    finally:
        np.random.set_state(state)


@pytest.mark.parametrize("env_id", ["MAML/HalfCheetahVel-rllab-v0", "MAML/HalfCheetahVel-v0"])
def test_cheetah_velocity_goals_are_the_legacy_seed_1_draw(env_id):
    goals = _legacy_global_draw(1, 2.0)
    tasks = authors_test_tasks(env_id)
    assert tasks == [GoalVelocity(float(g)) for g in goals]
    assert tasks[0] == GoalVelocity(2.0 * 0.417022004702574)  # first draw of RandomState(1)


def test_direction_thresholds_and_ant_seeds():
    cheetah = authors_test_tasks("MAML/HalfCheetahDir-rllab-v0")
    goals = _legacy_global_draw(1, 2.0)
    assert cheetah == [Direction(-1 if g < 1.0 else 1) for g in goals]
    ant = authors_test_tasks("MAML/AntDir-rllab-v0")
    goals = _legacy_global_draw(2, 3.0)
    assert ant == [Direction(-1 if g < 1.5 else 1) for g in goals]
    assert {t.direction for t in ant} == {-1, 1}
    ant_vel = authors_test_tasks("MAML/AntVel-v0", num_tasks=5)
    assert ant_vel == [GoalVelocity(float(g)) for g in _legacy_global_draw(1, 3.0)[:5]]


def test_families_without_fixed_tasks_are_refused():
    assert not has_authors_test_tasks("MAML/AntGoal-rllab-v0")
    with pytest.raises(ValueError, match="fix no test tasks for MAML/Navigation2D-v0"):
        authors_test_tasks("MAML/Navigation2D-v0")


def test_tasks_outside_a_narrowed_family_are_refused():
    config = TrainConfig(env_id="MAML/HalfCheetahVel-rllab-v0", env_kwargs={"high": 1.0})
    with pytest.raises(ValueError, match="outside"):
        sample_test_tasks(config, 40, seed=0, source="authors")


def test_cli_evaluates_on_the_authors_tasks(tmp_path, capsys):
    argv = [
        "evaluate",
        "--random-init",
        "--config",
        "halfcheetah-vel-rllab",
        "--test-tasks",
        "authors",
        "--num-tasks",
        "2",
        "--num-steps",
        "1",
        "--env-steps",
        "200",
        "--no-plots",
        "-o",
        str(tmp_path / "ev"),
    ]
    assert main(argv) == 0
    assert "the authors' 2 test tasks" in capsys.readouterr().out
    report = json.loads((tmp_path / "ev" / "returns.json").read_text())
    assert report["test_tasks"] == "authors"
    expected = _legacy_global_draw(1, 2.0)[:2]
    np.testing.assert_array_equal(np.array(report["tasks"]).ravel(), expected)
