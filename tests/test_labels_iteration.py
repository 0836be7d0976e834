"""The curves legend names runs by their label, and evaluation results name the training
iteration they evaluated (returns.json and the returns plot), the returns unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.figure
import numpy as np
import pytest

RESULTS = Path(__file__).resolve().parents[1] / "results"


@pytest.fixture
def legends(monkeypatch):
    """The legend texts of every figure saved while the test runs."""
    seen: list[list[str]] = []
    save = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        seen.append(
            [
                t.get_text()
                for ax in fig.axes
                if ax.get_legend()
                for t in ax.get_legend().get_texts()
            ]
        )
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    return seen


def test_a_runs_label_comes_from_its_config(tmp_path):
    from maml_rl.plots import run_label

    assert run_label(RESULTS / "navigation") == "MAML (navigation, seed 1)"
    assert run_label(RESULTS / "navigation-pretrained") == "pretrained (navigation, seed 1)"
    assert run_label(RESULTS / "maml-family/navigation/variants/promp-s2").startswith("ProMP (")
    assert run_label(tmp_path) == tmp_path.name  # no config.yaml: the folder's name


def test_the_curves_legend_names_labels_not_folders(tmp_path, legends):
    from maml_rl.plots import plot_training_curves

    runs = [RESULTS / "navigation", RESULTS / "navigation-pretrained"]
    plot_training_curves(runs, tmp_path / "c.png")
    assert legends[-1][0] == "MAML (navigation, seed 1): after adaptation"
    assert legends[-1][2] == "pretrained (navigation, seed 1): after adaptation"
    # the same label twice: the folders tell them apart
    plot_training_curves([RESULTS / "navigation"] * 2, tmp_path / "d.png")
    assert legends[-1][0] == "MAML (navigation, seed 1): navigation: after adaptation"
    plot_training_curves(runs, tmp_path / "e.png", ["a", "b"])
    assert legends[-1][0] == "a: after adaptation"


def test_evaluation_json_and_plot_name_the_evaluated_iteration(tmp_path, legends):
    from maml_rl.evaluation import EvalSettings, Method, evaluate, load_method, random_policy

    maml = load_method(RESULTS / "navigation")
    assert maml.iteration == 50  # the README's "best iteration"
    rand = Method("random init", "random", "-", maml.config, policy=random_policy(maml.config))
    settings = EvalSettings(num_tasks=3, num_steps=1, env_steps=300)
    report = evaluate([maml, rand], settings, output_dir=tmp_path, stdout=False)
    recorded = json.loads((tmp_path / "returns.json").read_text())
    assert [m["iteration"] for m in recorded["methods"]] == [50, None]
    assert "MAML (iteration 50)" in legends[0] and "random init" in legends[0]
    # the iteration is a label only: the returns are those of an evaluation without it
    maml.iteration = None
    again = evaluate([maml, rand], settings, stdout=False)
    for a, b in zip(report.results, again.results):
        np.testing.assert_array_equal(a.returns, b.returns)
    assert again.results[0].display_label == "MAML"
