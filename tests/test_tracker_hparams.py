"""Every run's resolved recipe reaches the tracker: CSV / TensorBoard ``hparams.yaml`` and the W&B run config."""

from __future__ import annotations

from pathlib import Path

import yaml
from runs import run_cli, tiny_run_args, without_evaluation

from rlhf_lightning.cli import hyperparameters_of, log_hyperparameters

ARGS = ("--trainer.enable_checkpointing", "false")


def _expected_settings(hparams: dict) -> None:
    """The settings a user compares runs by, as the tiny run set them."""
    model = hparams["model"]["init_args"]
    assert hparams["seed_everything"] == 0
    assert model["lr"] == 3e-3
    assert model["objective"]["class_path"].endswith("REBEL")
    assert model["objective"]["init_args"]["inner_epochs"] == 2
    assert model["reward"]["init_args"]["function"] == "tiny.good_word_reward"
    assert hparams["data"]["init_args"]["batch_size"] == 8
    assert hparams["rollout"]["init_args"]["max_new_tokens"] == 6
    assert hparams["trainer"]["limit_train_batches"] == 1
    assert not {"config", "print_config", "overwrite", "ckpt_path"} & set(hparams)


def test_csv_run_writes_the_resolved_recipe_to_hparams_yaml(tiny_model, tiny_data, tmp_path):
    cli = run_cli(without_evaluation(tiny_run_args(tiny_model, tiny_data, tmp_path, batches=1, extra=ARGS)))
    _expected_settings(yaml.safe_load((Path(cli.trainer.logger.log_dir) / "hparams.yaml").read_text()))


def test_wandb_offline_run_config_holds_the_resolved_recipe(tiny_model, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    args = without_evaluation(tiny_run_args(tiny_model, tiny_data, tmp_path, batches=1, extra=ARGS))
    at = args.index("lightning.pytorch.loggers.CSVLogger")
    args[at] = "lightning.pytorch.loggers.WandbLogger"
    args[at + 1:at + 3] = ["--trainer.logger.save_dir", str(tmp_path), "--trainer.logger.offline", "true",
                           "--trainer.logger.project", "hparams-test"]
    cli = run_cli(args)
    run = cli.trainer.logger.experiment
    try:
        _expected_settings({key: run.config[key] for key in run.config.keys()})
    finally:
        run.finish()


def test_no_logger_and_the_recorded_keys():
    log_hyperparameters([], "model: {lr: 1}")  # nothing to record into: no error
    text = "seed_everything: 3\nconfig: [a.yaml]\noverwrite: true\nckpt_path: null\nmodel: {lr: 0.1}\n"
    assert hyperparameters_of(text) == {"seed_everything": 3, "model": {"lr": 0.1}}

    class Recorder:
        def __init__(self):
            self.seen = []

        def log_hyperparams(self, params):
            self.seen.append(params)

    first, second = Recorder(), Recorder()
    log_hyperparameters([first, second], text)
    assert first.seen == second.seen == [{"seed_everything": 3, "model": {"lr": 0.1}}]
