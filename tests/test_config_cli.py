import pytest

from maml_rl.cli import main
from maml_rl.config import ConfigError, load_config, preset_names


def test_presets_load_with_paper_settings():
    assert {
        "navigation",
        "halfcheetah-vel",
        "halfcheetah-dir",
        "ant-vel",
        "ant-dir",
        "ant-goal",
    } <= set(preset_names())
    nav = load_config("navigation")
    assert (nav.meta_batch_size, nav.episodes_per_task, nav.inner_lr) == (20, 20, 0.1)
    assert nav.hidden_sizes == [100, 100] and nav.max_kl == 0.01 and nav.cg_iters == 10
    cheetah = load_config("halfcheetah-vel")
    assert cheetah.meta_batch_size == 40 and cheetah.env_id == "MAML/HalfCheetahVel-v0"
    assert load_config("ant-dir").episodes_per_task == 40


def test_overrides_are_parsed_as_yaml():
    c = load_config("navigation", ["inner_lr=0.5", "hidden_sizes=[64, 64]", "first_order=true"])
    assert c.inner_lr == 0.5 and c.hidden_sizes == [64, 64] and c.first_order is True


def test_yaml_file_config(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("env_id: MAML/HalfCheetahDir-v0\nmeta_batch_size: 8\n")
    c = load_config(str(path))
    assert c.meta_batch_size == 8 and c.config_name == "mine"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["learning_rate=1"], "unknown config key"),
        (["inner_lr=-1"], "'inner_lr'"),
        (["meta_batch_size=0"], "'meta_batch_size'"),
        (["inner_objective=maml"], "'inner_objective'"),
        (["hidden_sizes=[0]"], "'hidden_sizes'"),
        (["gamma=1.5"], "'gamma'"),
        (["oops"], "key=value"),
    ],
)
def test_bad_configs_name_the_problem(args, message):
    with pytest.raises(ConfigError, match=message):
        load_config("navigation", args)


def test_unknown_preset_and_missing_file():
    with pytest.raises(ConfigError, match="unknown config 'nope'"):
        load_config("nope")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("missing.yaml")


def test_cli_reports_bad_input_with_exit_code_2(tmp_path, capsys):
    assert main(["train", "--set", "bogus=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    code = main(
        ["train", "--set", "env_id=MAML/Nope-v0", f"log_dir={tmp_path}", "progress_bar=false"]
    )
    assert code == 2
    assert "unknown env id 'MAML/Nope-v0'" in capsys.readouterr().err


def test_an_unknown_env_id_suggests_the_closest_and_how_to_register_ones_own(capsys):
    assert main(["train", "--set", "env_id=MAML/Navigation2D-v1"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "did you mean 'MAML/Navigation2D-v0'?" in line
    assert "env_id=MODULE:ID" in line and "env_import=MODULE" in line
    assert "'MAML/MetaWorld-ML1-<task>-v0 (50 tasks)'" in line  # not the 50 ids one by one
    assert "MAML/MetaWorld-ML1-push-v0" not in line


def test_cli_trains_a_tiny_run(tmp_path, capsys):
    code = main(
        [
            "train",
            "--quiet",
            "--set",
            "num_iterations=1",
            "meta_batch_size=2",
            "episodes_per_task=2",
            "progress_bar=false",
            f"log_dir={tmp_path}",
            "run_name=tiny",
        ]
    )
    assert code == 0
    assert (tmp_path / "tiny" / "checkpoint.pt").is_file()
    assert "run folder" in capsys.readouterr().out


def test_a_folder_named_like_a_preset_does_not_hide_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "halfcheetah-vel").mkdir()  # e.g. a run folder named after its preset
    assert load_config("halfcheetah-vel").env_id == "MAML/HalfCheetahVel-v0"


def test_every_declared_choice_is_implemented_by_the_math_modules():
    """settings.py declares the choice lists once; each nonlinearity is a policy's activation and
    each inner objective gives a finite loss (a name added there alone fails here)."""
    import torch

    from maml_rl import settings
    from maml_rl.adaptation import inner_loss
    from maml_rl.policy import ACTIVATIONS, GaussianMLPPolicy, replicate
    from tests.conftest import random_loss_inputs

    assert list(ACTIVATIONS) == list(settings.NONLINEARITIES)
    data = random_loss_inputs(2, 6, 3, 2, seed=0)._replace(episodes=2)
    for nonlinearity in settings.NONLINEARITIES:
        policy = GaussianMLPPolicy(3, 2, (4,), nonlinearity).double()
        for objective in settings.INNER_OBJECTIVES:
            loss = inner_loss(policy, replicate(policy.params(), 2), data, objective)
            assert loss.shape == (2,) and bool(torch.isfinite(loss).all()), objective


def test_every_config_key_belongs_to_exactly_one_settings_group():
    import dataclasses

    from maml_rl.config import FIELDS, key_docs
    from maml_rl.settings import GROUPS

    keys = [f.name for g in GROUPS for f in dataclasses.fields(g)]
    assert sorted(keys) == sorted(FIELDS) and len(keys) == len(set(keys))
    assert all(doc for _, _, doc in key_docs())


def test_dice_with_a_subsampled_fisher_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"cg_subsample.*dice"):
        load_config("navigation", ["inner_objective=dice", "cg_subsample=0.5"])
    assert load_config("navigation", ["inner_objective=dice"]).inner_objective == "dice"


@pytest.mark.parametrize("value", ["yes", "no", "on", "off", "y"])
def test_yaml_1_1_booleans_are_refused_for_a_boolean_key(value):
    """``meta_sgd=yes`` is not read as true (PyYAML's YAML 1.1 would): one clear line."""
    with pytest.raises(ConfigError, match=r"'meta_sgd'.*must be true or false"):
        load_config(None, [f"meta_sgd={value}"])
    assert load_config(None, ["meta_sgd=True"]).meta_sgd is True
