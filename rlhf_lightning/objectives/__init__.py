"""Objectives: one file per method, all implementing :class:`Objective`."""

from rlhf_lightning.objectives.base import Objective
from rlhf_lightning.objectives.grpo import GRPO
from rlhf_lightning.objectives.online_dpo import OnlineDPO
from rlhf_lightning.objectives.ppo import PPO
from rlhf_lightning.objectives.rebel import REBEL
from rlhf_lightning.objectives.reinforce import REINFORCE
from rlhf_lightning.objectives.rloo import RLOO

__all__ = ["GRPO", "PPO", "REBEL", "REINFORCE", "RLOO", "Objective", "OnlineDPO"]
