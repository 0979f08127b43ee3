"""Objectives: one file per method, all implementing :class:`Objective`."""

from rlhf_lightning.objectives.apa import APA
from rlhf_lightning.objectives.base import Needs, Objective
from rlhf_lightning.objectives.dpo import DPO
from rlhf_lightning.objectives.grpo import GRPO
from rlhf_lightning.objectives.ipo import IPO
from rlhf_lightning.objectives.kto import KTO
from rlhf_lightning.objectives.online_dpo import OnlineDPO
from rlhf_lightning.objectives.orpo import ORPO
from rlhf_lightning.objectives.ppo import PPO
from rlhf_lightning.objectives.rebel import REBEL
from rlhf_lightning.objectives.reinforce import REINFORCE
from rlhf_lightning.objectives.reward_model import BradleyTerry
from rlhf_lightning.objectives.rloo import RLOO
from rlhf_lightning.objectives.sft import SFT
from rlhf_lightning.objectives.simpo import SimPO
from rlhf_lightning.objectives.slic import SLiC

__all__ = ["APA", "DPO", "GRPO", "IPO", "KTO", "ORPO", "PPO", "REBEL", "REINFORCE", "RLOO", "SFT", "BradleyTerry", "Needs", "Objective",
           "OnlineDPO", "SLiC", "SimPO"]
