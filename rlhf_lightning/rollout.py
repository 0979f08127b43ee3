"""The scored rollout a rollout callback hands to the objective."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from torch import Tensor

from rlhf_lightning.batches import GroupedRows


@dataclass
class Rollout(GroupedRows):
    """Generations for a batch of prompts, ``group_size`` consecutive rows per prompt.

    Shapes: ``N = num_prompts · group_size`` rows, ``L = P + R`` tokens (left-padded prompt block of
    width ``P``, right-padded response block of width ``R``).
    """

    input_ids: Tensor  # [N, L]
    attention_mask: Tensor  # [N, L]
    prompt_length: int  # P
    old_logprobs: Tensor  # [N, R] ln π_t per response token (fixed at rollout time), 0 on padding
    ref_logprobs: Tensor  # [N, R] ln π_ref per response token, 0 on padding
    rewards: Tensor  # [N] raw reward r(x, y) (after the no-EOS rule)
    shaped_rewards: Tensor  # [N] r̃(x, y) = r − γ·(ln π_t − ln π_ref)
    group_size: int  # samples per prompt
    temperature: float = 1.0  # sampling temperature; log-probs use logits / temperature
    kl_coef: float = 0.0  # γ (β for PPO) used to shape the rewards
    values: Optional[Tensor] = None  # [N, R] critic values V(x, y_<i) at rollout time (critic objectives)
    extras: dict[str, Tensor] = field(default_factory=dict)  # per-row tensors an objective adds in prepare()
    metrics: dict[str, float] = field(default_factory=dict)
