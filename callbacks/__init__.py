"""Callbacks that do the side work of a run: rollouts, evaluation, export.

Installed as ``rlhf_lightning.callbacks``.
"""

from rlhf_lightning.callbacks.evaluation import WinRateEvaluation
from rlhf_lightning.callbacks.export import ExportPolicy
from rlhf_lightning.callbacks.rollout import Rollout


def __getattr__(name: str):
    """The image callbacks load ``rlhf_lightning.diffusion`` (and diffusers) only when a recipe names them."""
    if name in ("ImageRollout", "ImageEvaluation"):
        from rlhf_lightning.callbacks import image_evaluation, image_rollout

        return getattr(image_rollout if name == "ImageRollout" else image_evaluation, name)
    raise AttributeError(f"module 'rlhf_lightning.callbacks' has no attribute {name!r}")


__all__ = ["ExportPolicy", "ImageEvaluation", "ImageRollout", "Rollout", "WinRateEvaluation"]
