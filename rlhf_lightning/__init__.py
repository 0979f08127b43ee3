"""rlhf-lightning: post-training of language models with feedback, on PyTorch Lightning."""

from rlhf_lightning.errors import RecipeError
from rlhf_lightning.models import LoraSettings, ModelConfig
from rlhf_lightning.module import RLHFModule
from rlhf_lightning.objectives import REBEL, Objective

__all__ = ["REBEL", "LoraSettings", "ModelConfig", "Objective", "RLHFModule", "RecipeError"]
__version__ = "0.1.0"
