"""Data modules: prompts for online objectives; SFT rows, preference pairs and unpaired labels for
offline ones."""

from rlhf_lightning.data.offline import OfflineDataModule, PreferenceDataModule, SFTDataModule, UnpairedDataModule
from rlhf_lightning.data.prompts import PromptDataModule

__all__ = ["OfflineDataModule", "PreferenceDataModule", "PromptDataModule", "SFTDataModule", "UnpairedDataModule"]
