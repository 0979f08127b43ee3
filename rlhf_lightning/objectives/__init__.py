"""Objectives: one file per method, all implementing :class:`Objective`."""

from rlhf_lightning.objectives.base import Objective
from rlhf_lightning.objectives.rebel import REBEL

__all__ = ["Objective", "REBEL"]
