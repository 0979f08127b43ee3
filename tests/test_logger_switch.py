"""Switching a W&B recipe to CSV or TensorBoard on the command line: no save_dir needed, no nested duplicate
folder, one ``last.ckpt``; a missing tensorboard package is one message; ``--print_config`` shows the folders
the run will use."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import yaml

from rlhf_lightning.cli import main
from runs import tiny_recipe


def wandb_recipe(tiny_model, tiny_data, root: Path) -> dict:
    """The tiny recipe as the shipped recipes are written: a W&B logger named after the run, a last checkpoint
    every step, an export."""
    recipe = copy.deepcopy(tiny_recipe(tiny_model, tiny_data, root))
    recipe["trainer"].update(limit_train_batches=2, log_every_n_steps=1, enable_checkpointing=True, logger={
        "class_path": "lightning.pytorch.loggers.WandbLogger",
        "init_args": {"project": "rlhf-lightning", "name": root.name, "offline": True}})
    recipe["trainer"]["callbacks"] = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"save_last": True, "save_top_k": 0, "every_n_train_steps": 1}},
        {"class_path": "rlhf_lightning.callbacks.ExportPolicy"}]
    return recipe


def write(path: Path, recipe: dict) -> str:
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


@pytest.mark.parametrize("logger, written", [("CSVLogger", "metrics.csv"), ("TensorBoardLogger", "events.out.*")])
def test_a_logger_switched_on_the_command_line_writes_into_the_run_folder(tiny_model, tiny_data, tmp_path, logger,
                                                                          written):
    root = tmp_path / "quick"
    recipe = write(tmp_path / "quick.yaml", wandb_recipe(tiny_model, tiny_data, root))
    main(["run", recipe, "--trainer.logger", f"lightning.pytorch.loggers.{logger}"])
    (version,) = (root / "lightning_logs").iterdir()  # not root/quick/version_0
    assert version.name == "version_0" and list(version.glob(written)) and (version / "hparams.yaml").is_file()
    assert yaml.safe_load((version / "hparams.yaml").read_text())["model"]["init_args"]["lr"] == 0.003
    assert not (root / "quick").exists() and not (root / "wandb").exists()
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["last.ckpt"]
    assert (root / "policy" / "config.json").is_file()


def test_missing_tensorboard_is_one_message(tiny_model, tiny_data, tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorboard", "tensorboardX") else real(name, *a))
    recipe = write(tmp_path / "r.yaml", wandb_recipe(tiny_model, tiny_data, tmp_path / "run"))
    with pytest.raises(SystemExit) as stop:
        main(["run", recipe, "--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert "trainer.logger: TensorBoardLogger needs the tensorboard package" in err and "[tensorboard]" in err


@pytest.mark.parametrize("flag", ["--print_config", "--print_config=skip_null"])
def test_print_config_shows_the_folders_the_run_uses(tiny_model, tiny_data, tmp_path, capsys, flag):
    recipe = wandb_recipe(tiny_model, tiny_data, tmp_path / "run")
    del recipe["trainer"]["default_root_dir"]
    recipe["trainer"]["logger"]["init_args"]["name"] = "mine"  # the W&B run name is the recipe's name
    path = write(tmp_path / "mine.yaml", recipe)
    with pytest.raises(SystemExit) as stop:
        main(["run", path, "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", flag])
    assert stop.value.code == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    trainer = shown["trainer"]
    assert trainer["default_root_dir"] == "runs/mine"
    assert trainer["logger"]["init_args"]["save_dir"] == "runs/mine"
    assert trainer["logger"]["init_args"]["name"] == "lightning_logs"
    dirpaths = [c["init_args"]["dirpath"] for c in trainer["callbacks"]]
    assert dirpaths == ["runs/mine/checkpoints", "runs/mine/policy"]
    assert "config" not in shown and "print_config" not in shown
    assert ("ckpt_path" in shown) == (flag == "--print_config")  # skip_null leaves out nulls
    assert not Path("runs/mine").exists()  # shown, nothing run


def test_print_config_of_evaluate_shows_the_evaluation_folder(tiny_model, tiny_data, tmp_path, capsys):
    root = tmp_path / "run"
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "last.ckpt").write_bytes(b"")
    path = write(tmp_path / "r.yaml", wandb_recipe(tiny_model, tiny_data, root))
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", path, "--ckpt_path", "last", "--print_config"])
    assert stop.value.code == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["trainer"]["default_root_dir"] == str(root / "evaluation" / "last")
    assert shown["ckpt_path"] == str(root / "checkpoints" / "last.ckpt")
    assert shown["trainer"]["callbacks"] == []  # checkpointing and export only act in training


@pytest.mark.parametrize("key, value", [("optimizer", "torch.optim.SGD"),
                                        ("lr_scheduler", "torch.optim.lr_scheduler.ConstantLR")])
def test_lightningclis_optimizer_keys_are_refused(tiny_model, tiny_data, tmp_path, capsys, key, value):
    recipe = write(tmp_path / "r.yaml", wandb_recipe(tiny_model, tiny_data, tmp_path / "run"))
    with pytest.raises(SystemExit) as stop:
        main(["run", recipe, f"--{key}", value])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert f"{key}: is not used: RLHFModule builds and steps its own optimizer" in err


def test_the_run_folder_holds_its_recipe_whatever_the_logger(tiny_model, tiny_data, tmp_path):
    root = tmp_path / "quick"
    recipe = write(tmp_path / "quick.yaml", wandb_recipe(tiny_model, tiny_data, root))
    main(["run", recipe, "--trainer.logger", "lightning.pytorch.loggers.CSVLogger"])
    saved = yaml.safe_load((root / "config.yaml").read_text())
    assert saved["trainer"]["logger"]["class_path"].endswith("CSVLogger")
    assert not list(root.glob("lightning_logs/*/config.yaml"))
