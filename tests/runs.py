"""Run the CLI in-process on the tiny model and data (shared by end-to-end tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from lightning.pytorch import Callback

from tiny import make_chat_tokenizer, make_model_dir

from rlhf_lightning.cli import RLHFCLI
from rlhf_lightning.generation import HFGenerator


REBEL_ARGS = ("--model.objective", "rlhf_lightning.REBEL", "--model.objective.inner_epochs", "2")


def tiny_run_args(model_dir: Path, data: dict, root: Path, *, batches: int = 8, lr: float = 3e-3,
                  objective: Sequence[str] = REBEL_ARGS, extra: Sequence[str] = ()) -> list[str]:
    """Arguments for a run on the tiny model with the ``good`` word reward, CSV logging.

    ``objective`` holds the objective's arguments (REBEL with 2 inner epochs by default), e.g.
    ``["--model.objective", "rlhf_lightning.objectives.rloo.RLOO", "--model.objective.k", "4"]``.
    """
    return [
        "fit",
        "--seed_everything", "0",
        "--model", "rlhf_lightning.RLHFModule",
        "--model.policy.path", str(model_dir),
        *objective,
        "--model.reward", "rlhf_lightning.rewards.FunctionReward",
        "--model.reward.function", "tiny.good_word_reward",
        "--model.lr", str(lr),
        "--data", "rlhf_lightning.data.PromptDataModule",
        "--data.train_file", str(data["train"]), "--data.test_file", str(data["test"]),
        "--data.tokenizer", str(model_dir), "--data.batch_size", "8",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(batches),
        "--trainer.log_every_n_steps", "1",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(root),
        "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--rollout.max_new_tokens", "6", "--rollout.no_eos_reward", "null",
        "--trainer.callbacks+=rlhf_lightning.callbacks.WinRateEvaluation", "--trainer.callbacks.max_new_tokens", "6",
        *extra,
    ]


def without_evaluation(args: Sequence[str]) -> list[str]:
    """``tiny_run_args`` without its WinRateEvaluation callback (its flag and its one option)."""
    args = list(args)
    at = args.index("--trainer.callbacks+=rlhf_lightning.callbacks.WinRateEvaluation")
    return args[:at] + args[at + 3:]


def run_cli(args: Sequence[str]) -> RLHFCLI:
    return RLHFCLI(args=list(args))


def fit_with_callbacks(args: Sequence[str], *callbacks: Callback) -> RLHFCLI:
    """Like :func:`run_cli` (``args`` start with ``fit``), with extra callbacks added to the trainer."""
    cli = RLHFCLI(args=list(args[1:]), run=False)
    cli.trainer.callbacks.extend(callbacks)
    cli.trainer.fit(cli.model, cli.datamodule)
    return cli


class RecordRollouts(Callback):
    """Keeps each complete rollout (samples with ``ln π_t`` and shaped rewards) that ``training_step`` built,
    and whether ``ln π_t`` came from the update's own forward."""

    def __init__(self) -> None:
        self.rollouts = []
        self.deferred: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.deferred.append(pl_module.takes_old_logprobs_from_update(len(batch["samples"])))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rollouts.append(outputs["rollout"])


class RecordingGenerator(HFGenerator):
    """The Hugging Face engine, keeping every :class:`~rlhf_lightning.generation.Generation` it returns
    with the sampler's own log-probs (for fidelity checks)."""

    def __init__(self, share_prefill_from: int | None = 64) -> None:
        super().__init__(record_sampler_logprobs=True, share_prefill_from=share_prefill_from)
        self.generations = []

    def generate(self, model, input_ids, attention_mask, params, use_reference=False):
        generation = super().generate(model, input_ids, attention_mask, params, use_reference)
        self.generations.append(generation)
        return generation


def tiny_recipe(model_dir: Path, data: dict, root: Path) -> dict:
    """A complete recipe for one rollout batch of REBEL on the tiny model (as a user would write it)."""
    return {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 1, "limit_train_batches": 1, "logger": False, "enable_checkpointing": False,
            "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(root),
        },
        "rollout": {"class_path": "rlhf_lightning.callbacks.Rollout",
                    "init_args": {"max_new_tokens": 6, "no_eos_reward": None}},
        "model": {
            "class_path": "rlhf_lightning.RLHFModule",
            "init_args": {
                "policy": {"path": str(model_dir)},
                "objective": {"class_path": "rlhf_lightning.REBEL", "init_args": {"inner_epochs": 1}},
                "reward": {"class_path": "rlhf_lightning.rewards.FunctionReward",
                           "init_args": {"function": "tiny.good_word_reward"}},
                "lr": 0.003,
            },
        },
        "data": {
            "class_path": "rlhf_lightning.data.PromptDataModule",
            "init_args": {"train_file": str(data["train"]), "tokenizer": str(model_dir), "batch_size": 8},
        },
    }


def chat_model_dir(root: Path) -> Path:
    """A tiny model with a ChatML-style tokenizer of 20 tokens (the tiny Llama has 15)."""
    path = root / "chat_model"
    return path if path.exists() else make_model_dir(path, tokenizer=make_chat_tokenizer())
