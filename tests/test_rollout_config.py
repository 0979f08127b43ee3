"""The rollout at its own recipe key: command-line overrides, --print_config, recipes stacked on each other,
a user's subclass by class_path, and the checks it makes before any model is loaded."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from rlhf_lightning.callbacks import ExportPolicy, Rollout, WinRateEvaluation
from rlhf_lightning.cli import RLHFCLI, main
from runs import tiny_recipe


class GreedierRollout(Rollout):
    """A user's rollout subclass with one more setting."""

    def __init__(self, label: str = "mine", **kwargs) -> None:
        super().__init__(**kwargs)
        self.label = label


def _write(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


def _recipe(tiny_model, tiny_data, root) -> dict:
    recipe = copy.deepcopy(tiny_recipe(tiny_model, tiny_data, root))
    recipe["trainer"]["callbacks"] = [
        {"class_path": "rlhf_lightning.callbacks.WinRateEvaluation", "init_args": {"max_new_tokens": 6}},
        {"class_path": "rlhf_lightning.callbacks.ExportPolicy"},
    ]
    recipe["data"]["init_args"]["test_file"] = str(tiny_data["test"])
    return recipe


def _rollout(cli) -> Rollout:
    (rollout,) = [c for c in cli.trainer.callbacks if isinstance(c, Rollout)]
    return rollout


def test_rollout_settings_from_the_command_line(tiny_model, tiny_data, tmp_path):
    recipe = _write(tmp_path / "recipe.yaml", _recipe(tiny_model, tiny_data, tmp_path))
    cli = RLHFCLI(args=["--config", str(recipe), "--rollout.kl_coef", "0.2", "--rollout.max_new_tokens", "24"],
                  run=False)
    rollout = _rollout(cli)
    assert rollout.kl_coef == 0.2 and rollout.sampling.max_new_tokens == 24
    assert rollout.no_eos_reward is None  # the recipe's other settings stay
    assert {type(c) for c in cli.trainer.callbacks} >= {WinRateEvaluation, ExportPolicy, Rollout}


def test_print_config_shows_the_overrides(tiny_model, tiny_data, tmp_path, capsys):
    recipe = _write(tmp_path / "recipe.yaml", _recipe(tiny_model, tiny_data, tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(recipe), "--rollout.kl_coef", "0.2", "--rollout.max_new_tokens", "24", "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["rollout"]["init_args"]["kl_coef"] == 0.2
    assert printed["rollout"]["init_args"]["max_new_tokens"] == 24


@pytest.mark.parametrize("with_class_path", [False, True])
def test_a_second_recipe_changes_one_rollout_setting_and_keeps_the_rest(tiny_model, tiny_data, tmp_path,
                                                                        with_class_path):
    base = _write(tmp_path / "base.yaml", _recipe(tiny_model, tiny_data, tmp_path))
    change = {"rollout": {"init_args": {"kl_coef": 0.2}}}
    if with_class_path:
        change["rollout"]["class_path"] = "rlhf_lightning.callbacks.Rollout"
    more = _write(tmp_path / "more.yaml", change)
    cli = RLHFCLI(args=["--config", str(base), "--config", str(more)], run=False)
    rollout = _rollout(cli)
    assert rollout.kl_coef == 0.2
    assert rollout.sampling.max_new_tokens == 6 and rollout.no_eos_reward is None
    kinds = [type(c) for c in cli.trainer.callbacks]
    assert kinds.count(WinRateEvaluation) == 1 and kinds.count(ExportPolicy) == 1 and kinds.count(Rollout) == 1


def test_a_users_rollout_subclass_by_class_path(tiny_model, tiny_data, tmp_path):
    recipe = _recipe(tiny_model, tiny_data, tmp_path)
    recipe["rollout"] = {"class_path": "test_rollout_config.GreedierRollout",
                         "init_args": {"label": "x", "max_new_tokens": 5, "temperature": 0.5}}
    cli = RLHFCLI(args=["--config", str(_write(tmp_path / "recipe.yaml", recipe))], run=False)
    rollout = _rollout(cli)
    assert isinstance(rollout, GreedierRollout) and rollout.label == "x"
    assert rollout.sampling.max_new_tokens == 5 and rollout.temperature == 0.5


def test_an_offline_recipe_needs_no_rollout_key(tiny_model, tiny_data, tmp_path):
    recipe = _recipe(tiny_model, tiny_data, tmp_path)
    del recipe["rollout"]
    cli = RLHFCLI(args=["--config", str(_write(tmp_path / "recipe.yaml", recipe))], run=False)
    assert _rollout(cli).kl_coef == 0.05  # the default rollout; it does nothing for offline objectives


@pytest.mark.parametrize("callback", [Rollout(), WinRateEvaluation(), ExportPolicy()], ids=lambda c: type(c).__name__)
def test_callbacks_refuse_a_module_that_is_not_an_rlhf_module(callback):
    from lightning.pytorch import LightningModule

    from rlhf_lightning.errors import RecipeError

    with pytest.raises(RecipeError, match="RLHFModule"):
        callback.setup(None, LightningModule(), "fit")


def test_a_cut_sampling_distribution_is_named_in_a_warning():
    with pytest.warns(UserWarning, match="off-policy"):
        Rollout(top_p=0.9)
    with pytest.warns(UserWarning, match="off-policy"):
        Rollout(top_k=20)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Rollout()  # the defaults sample exactly from the policy


def test_the_data_tokenizer_defaults_to_the_policys(tiny_model, tiny_data, tmp_path):
    from runs import run_cli, tiny_run_args, without_evaluation

    args = without_evaluation(tiny_run_args(tiny_model, tiny_data, tmp_path, batches=1))
    at = args.index("--data.tokenizer")
    cli = run_cli(args[:at] + args[at + 2:])
    assert cli.datamodule.tokenizer_path is None
    assert cli.datamodule.tokenizer.get_vocab() == cli.model.tokenizer.get_vocab()


def test_a_data_module_alone_needs_its_tokenizer_named(tiny_data):
    from rlhf_lightning.data import PromptDataModule
    from rlhf_lightning.errors import RecipeError

    with pytest.raises(RecipeError, match="data.init_args.tokenizer"):
        PromptDataModule(train_file=str(tiny_data["train"])).setup("fit")
