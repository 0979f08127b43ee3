"""rlhf-lightning: post-training of language models with feedback, on PyTorch Lightning.

The names below are imported when first used, so that ``import rlhf_lightning.<module>`` (the console's
``--help``, for one) does not load torch and Lightning until they are needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rlhf_lightning.errors import RecipeError
    from rlhf_lightning.models import LoraSettings, ModelConfig
    from rlhf_lightning.module import RLHFModule
    from rlhf_lightning.objectives import REBEL, Objective

_EXPORTS = {"REBEL": "rlhf_lightning.objectives", "Objective": "rlhf_lightning.objectives",
            "LoraSettings": "rlhf_lightning.models", "ModelConfig": "rlhf_lightning.models",
            "RLHFModule": "rlhf_lightning.module", "RecipeError": "rlhf_lightning.errors"}

__all__ = ["REBEL", "LoraSettings", "ModelConfig", "Objective", "RLHFModule", "RecipeError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rlhf_lightning' has no attribute '{name}'")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
