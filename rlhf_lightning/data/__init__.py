"""Data modules."""

from rlhf_lightning.data.prompts import PromptDataModule

__all__ = ["PromptDataModule"]
