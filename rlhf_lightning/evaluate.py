"""``rlhf-lightning evaluate RECIPE.yaml --ckpt_path CKPT`` (or ``--policy_dir DIR``): the recipe's evaluation of a
trained policy, without training.

The command runs LightningCLI's ``validate`` on the recipe, so that every strategy and precision loads the model
as training does (sharded checkpoints included). The recipe is changed in three ways first:

- the policy: a checkpoint of the run (``--ckpt_path``: a path, or ``last`` for
  ``<trainer.default_root_dir>/checkpoints/last.ckpt``) is loaded into the recipe's policy; an exported policy
  directory (``--policy_dir``) replaces the policy's path, and the recipe's policy becomes the reference (the
  SFT model the win rate and KL compare with);
- the outputs go to ``<trainer.default_root_dir>/evaluation/<checkpoint or directory name>``, a run folder of
  its own (the training run's outputs stay as they are);
- callbacks that only act in training (ModelCheckpoint, ExportPolicy) are dropped.

Then :class:`EvaluationRun` runs each :class:`~rlhf_lightning.callbacks.WinRateEvaluation` of the recipe once on
its split (``test``) and writes ``summary.json`` with the same fields as the end of training; an offline
objective's validation loss and metric (``val/*``) are computed by Lightning's validation loop when the data has a
validation split.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader

from rlhf_lightning.errors import RecipeError

FOLDER = "evaluation"
TRAINING_ONLY = ("ModelCheckpoint", "ExportPolicy")
EXAMPLE = "e.g. rlhf-lightning evaluate recipes/quickstart.yaml --ckpt_path last"


def checkpoint_file(ckpt_path: str, root: Path) -> Path:
    """``--ckpt_path`` of ``evaluate``: ``last`` is the run's ``checkpoints/last.ckpt``; a path must exist."""
    path = root / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if not path.exists():
        where = f"no last checkpoint in '{root / 'checkpoints'}'" if ckpt_path == "last" else f"'{path}' does not exist"
        raise RecipeError("ckpt_path", where, "give the path of a checkpoint file of the run, or train first "
                          "(ModelCheckpoint with save_last: true writes checkpoints/last.ckpt)")
    return path


def policy_directory(policy_dir: str) -> Path:
    path = Path(policy_dir)
    if not (path / "config.json").is_file():
        problem = "does not exist" if not path.exists() else "holds no config.json (not a Hugging Face model directory)"
        raise RecipeError("policy_dir", f"'{path}' {problem}",
                          "give the policy directory a run exported (<run folder>/policy, written by ExportPolicy)")
    return path


def use_exported_policy(model_args: Any, policy_dir: Path) -> None:
    """The exported policy is the one evaluated; the recipe's policy stays the reference (unless the recipe names
    one). The export holds merged weights: no LoRA adapter is added to it."""
    policy = model_args.policy
    if model_args.get("reference") is None:
        reference = copy.deepcopy(policy)
        reference.lora = None
        model_args.reference = reference
    policy.path = str(policy_dir)
    policy.revision = None
    policy.lora = None
    policy.tokenizer = None  # exported with the policy


def prepare_evaluation(config: Any, training_root: Path) -> None:
    """Change the parsed recipe of ``evaluate`` (LightningCLI's ``validate``) as the module docstring says."""
    ckpt_path, policy_dir = config.get("ckpt_path"), config.get("policy_dir")
    if bool(ckpt_path) == bool(policy_dir):
        given = "both" if ckpt_path else "neither"
        raise RecipeError("ckpt_path", f"evaluate takes one of --ckpt_path (a checkpoint of the run) and --policy_dir "
                                       f"(an exported policy directory); {given} given", EXAMPLE)
    if ckpt_path:
        checkpoint = checkpoint_file(str(ckpt_path), training_root)
        config["ckpt_path"] = str(checkpoint)
        name = checkpoint.stem if checkpoint.is_file() else checkpoint.name
    else:
        directory = policy_directory(str(policy_dir))
        use_exported_policy(config["model"]["init_args"], directory)
        name = directory.name
    trainer = config["trainer"]
    trainer["default_root_dir"] = str(training_root / FOLDER / name)
    callbacks = trainer.get("callbacks") or []
    trainer["callbacks"] = [c for c in callbacks
                            if not str(getattr(c, "get", lambda _: "")("class_path") or "").endswith(TRAINING_ONLY)]
    trainer["enable_checkpointing"] = False  # nor Lightning's default ModelCheckpoint
    # Lightning's advice to keep the callbacks that wrote the checkpoint: those left out only act in training
    warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, callbacks used to create")
    if trainer.get("limit_val_batches") == 0:  # a training setting: the evaluation itself runs in this loop
        trainer["limit_val_batches"] = None


def one_step_loader() -> DataLoader:
    """The loop's only batch when the data has no validation split: the evaluations run in its end hook."""
    return DataLoader([0], batch_size=1)


def attach_validation_loop(datamodule) -> None:
    """Give a data module without validation batches (the prompt data of online objectives, offline data without
    ``validation_file``) a one-batch loader, so that Lightning's validation loop, and with it
    :class:`EvaluationRun`, runs."""
    from lightning.pytorch import LightningDataModule
    from lightning.pytorch.utilities.model_helpers import is_overridden

    if is_overridden("val_dataloader", datamodule, LightningDataModule) and getattr(datamodule, "validation_file", None):
        return
    datamodule.val_dataloader = one_step_loader


class EvaluationRun(Callback):
    """The end of ``evaluate``: every WinRateEvaluation of the recipe once, then ``summary.json``.

    Args:
        source: what was evaluated (``{"evaluated_checkpoint": path}`` or ``{"evaluated_policy_dir": path}``),
            recorded in the summary.
    """

    def __init__(self, source: dict[str, str]) -> None:
        self.source = source

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from rlhf_lightning.callbacks import WinRateEvaluation

        evaluations = [c for c in trainer.callbacks if isinstance(c, WinRateEvaluation)]
        for evaluation in evaluations:
            evaluation.final_evaluation(trainer, pl_module)
        pl_module.summary.update(self.source)
        if "evaluated_checkpoint" in self.source:  # the checkpoint counts its run's batches
            key = "rollout_batches" if pl_module.objective.needs.rollout else "train_batches"
            pl_module.summary[key] = pl_module._rollout_batches
        if trainer.is_global_zero:
            pl_module.write_summary()


def nothing_to_evaluate(objective_name: str, has_validation: bool, has_evaluation: bool) -> Optional[RecipeError]:
    """``evaluate`` on a recipe that defines no evaluation: no WinRateEvaluation callback and no validation split."""
    if has_evaluation or has_validation:
        return None
    return RecipeError("trainer.callbacks", f"the recipe defines no evaluation of {objective_name}: no "
                       "WinRateEvaluation callback and no validation split",
                       "add - class_path: rlhf_lightning.callbacks.WinRateEvaluation to trainer.callbacks (see "
                       "recipes/quickstart.yaml), or set data.init_args.validation_file")
