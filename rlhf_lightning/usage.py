"""The command line's usage text, importable without torch or Lightning (so that ``--help`` is instant)."""

from __future__ import annotations

from typing import Sequence

USAGE = """usage: rlhf-lightning run RECIPE.yaml [MORE.yaml ...] [--section.key value ...]
       rlhf-lightning evaluate RECIPE.yaml [...] (--ckpt_path CKPT|last | --policy_dir DIR)
       rlhf-lightning generate [RECIPE.yaml ...] (--policy_dir DIR | --ckpt_path CKPT) [--prompts FILE] [--output FILE]
       rlhf-lightning fit --config RECIPE.yaml [...]   (LightningCLI's own form of run)

commands:
  run       train a recipe; later recipes override earlier ones, each recipe's folder is put on the import path
  evaluate  the recipe's evaluation (WinRateEvaluation on its test split; an offline objective's validation
            loss and metrics) of a checkpoint or an exported policy, without training; outputs in
            <trainer.default_root_dir>/evaluation/<checkpoint or directory name>
  generate  sample responses for a prompt file (.jsonl/.json/.csv/.parquet, .txt or standard input, one prompt
            per line) to JSONL, with the recipe's sampling settings (flags override them); --help for the flags
  fit       the same as run, in LightningCLI's form (--config per recipe)

During training the WinRateEvaluation callback evaluates on the validation split every n rollout batches and
on the test split at the end, writing summary.json, eval_history.json, eval_curves.png and samples.jsonl to
the run folder.

where the options are:
  rlhf-lightning fit --help                      every section (model, data, rollout, trainer, ...)
  rlhf-lightning fit --model.help RLHFModule     one class's init arguments (also --data.help, --rollout.help)
  rlhf-lightning run RECIPE.yaml --print_config  the resolved recipe with every key it can set
  rlhf-lightning generate --help                 the flags of generate

Settings come from recipes and the command line only: environment variables do not set recipe keys.
Bad input ends in one message naming the recipe key and the fix (exit code 2).

examples:
  rlhf-lightning run recipes/quickstart.yaml
  rlhf-lightning run recipes/quickstart.yaml recipes/examples/pairwise_hinge.yaml
  rlhf-lightning run recipes/quickstart.yaml --seed_everything 3 --rollout.kl_coef 0.1
  rlhf-lightning evaluate recipes/quickstart.yaml --ckpt_path last
  rlhf-lightning generate --policy_dir runs/quickstart/policy --prompts prompts.txt --temperature 0
  rlhf-lightning fit --config recipes/quickstart.yaml --print_config
"""

NOT_OFFERED = ("validate", "test", "predict")
"""LightningCLI subcommands the library does not offer: the module has no validation/test/predict loops."""


def not_offered_message(command: str) -> str:
    """One line for ``rlhf-lightning validate|test|predict``: what to run instead."""
    return (f"rlhf-lightning: '{command}' is not a command of rlhf-lightning (the module has no {command} loop): "
            "the evaluation runs during training, by the WinRateEvaluation callback of a recipe (see "
            "recipes/quickstart.yaml), on the validation split every n rollout batches and on the test split "
            "at the end; to evaluate a trained policy use 'rlhf-lightning evaluate RECIPE.yaml --ckpt_path last' "
            "(or --policy_dir DIR), to sample from it 'rlhf-lightning generate', to train 'rlhf-lightning run "
            "RECIPE.yaml'")


def answer_help(argv: Sequence[str]) -> None:
    """Print :data:`USAGE` and exit for no arguments (exit code 2) or a bare ``-h``/``--help`` (exit code 0)."""
    if not argv or list(argv) in (["-h"], ["--help"]):
        print(USAGE)
        raise SystemExit(0 if argv else 2)
