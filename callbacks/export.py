"""``ExportPolicy``: write the trained policy as a Hugging Face directory at the end of training."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from lightning.pytorch import Callback, LightningModule, Trainer

from rlhf_lightning.module import require_rlhf_module


class ExportPolicy(Callback):
    """Save the policy (safetensors) and tokenizer with ``save_pretrained`` when training ends.

    Args:
        dirpath: output directory; default ``<trainer.default_root_dir>/policy``.
        merge_lora: merge a LoRA adapter into the weights (otherwise only the adapter is saved).
    """

    def __init__(self, dirpath: Optional[str] = None, merge_lora: bool = True) -> None:
        self.dirpath = dirpath
        self.merge_lora = merge_lora

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        require_rlhf_module(pl_module, "trainer.callbacks[ExportPolicy]")

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        directory = Path(self.dirpath or Path(trainer.default_root_dir) / "policy")
        pl_module.export(directory, merge_lora=self.merge_lora)  # every rank: sharded weights are gathered
        pl_module.summary["policy_dir"] = str(directory)
        trainer.strategy.barrier("export_policy")
