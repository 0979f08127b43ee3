"""Callbacks that do the side work of a run: rollouts, evaluation, export.

Installed as ``rlhf_lightning.callbacks``.
"""

from rlhf_lightning.callbacks.evaluation import WinRateEvaluation
from rlhf_lightning.callbacks.export import ExportPolicy
from rlhf_lightning.callbacks.rollout import Rollout

__all__ = ["ExportPolicy", "Rollout", "WinRateEvaluation"]
