"""Command line: ``rlhf-lightning run RECIPE.yaml [--key value ...]`` (a LightningCLI).

``run RECIPE`` is shorthand for ``fit --config RECIPE``; every LightningCLI subcommand and flag
(``fit``, ``validate``, ``--print_config``, ``--help``) works as usual.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Optional, Sequence

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI

from rlhf_lightning.errors import RecipeError
from rlhf_lightning.module import RLHFModule

USAGE = """usage: rlhf-lightning run RECIPE.yaml [--section.key value ...]
       rlhf-lightning {fit,validate,test} --config RECIPE.yaml [...]   (any LightningCLI command)

examples:
  rlhf-lightning run recipes/quickstart.yaml
  rlhf-lightning run recipes/quickstart.yaml --seed_everything 3 --trainer.max_epochs 2
  rlhf-lightning fit --config recipes/quickstart.yaml --print_config
"""


class RLHFCLI(LightningCLI):
    """LightningCLI with the library's defaults: any ``RLHFModule`` subclass and any data module."""

    def __init__(self, args: Optional[Sequence[str]] = None, run: bool = True) -> None:
        super().__init__(
            RLHFModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"use_distributed_sampler": False},
            parser_kwargs={"default_env": False},
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--cpu_threads", type=Optional[int], default=None,
            help="torch intra-op threads (torch.set_num_threads). Tiny models on a CPU run far faster "
                 "with 1 thread; null keeps torch's default.")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        threads = config.get("cpu_threads")
        if threads is not None:
            if threads < 1:
                raise RecipeError("cpu_threads", f"must be ≥ 1 or null, got {threads}")
            torch.set_num_threads(threads)


def translate_args(argv: Sequence[str]) -> list[str]:
    """``run RECIPE ...`` → ``fit --config RECIPE ...``; anything else is passed through."""
    argv = list(argv)
    if argv and argv[0] == "run":
        if len(argv) < 2 or argv[1].startswith("-"):
            raise SystemExit(USAGE)
        recipe = argv[1]
        if not os.path.exists(recipe):
            raise RecipeError("RECIPE", f"recipe file '{recipe}' does not exist", "see the recipes/ folder")
        return ["fit", "--config", recipe, *argv[2:]]
    return argv


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry point; bad input ends in one clear message and exit code 2."""
    os.environ.setdefault("WANDB_SILENT", "true")
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help"} and len(argv) == 1:
        print(USAGE)
        if not argv:
            raise SystemExit(2)
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
    try:
        RLHFCLI(args=translate_args(argv))
    except RecipeError as error:
        print(f"rlhf-lightning: error in the recipe\n  {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
