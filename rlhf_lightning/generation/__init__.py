"""Generation engines for rollouts and evaluation (see :mod:`rlhf_lightning.generation.base`)."""

from rlhf_lightning.generation.base import Generation, Generator, SamplingParams
from rlhf_lightning.generation.eos import eos_token_ids
from rlhf_lightning.generation.huggingface import HFGenerator
from rlhf_lightning.generation.masks import response_attention_mask

__all__ = ["Generation", "Generator", "HFGenerator", "SamplingParams", "eos_token_ids", "response_attention_mask"]
