"""The scored rollout a rollout callback hands to the objective."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from torch import Tensor

from rlhf_lightning.batches import GroupedRows
from rlhf_lightning.logprobs import kl_shaped_reward, masked_mean


@dataclass
class Rollout(GroupedRows):
    """Generations for a batch of prompts, ``group_size`` consecutive rows per prompt.

    Shapes: ``N = num_prompts · group_size`` rows, ``L = P + R`` tokens (left-padded prompt block of
    width ``P``, right-padded response block of width ``R``).

    ``old_logprobs`` and ``shaped_rewards`` are ``None`` only between the rollout callback and
    ``RLHFModule.training_step`` when the module takes ``ln π_t`` from the update's own forward
    (see :meth:`attach_policy_logprobs`); objectives always see them filled.
    """

    input_ids: Tensor  # [N, L]
    attention_mask: Tensor  # [N, L]
    prompt_length: int  # P
    old_logprobs: Optional[Tensor]  # [N, R] ln π_t per response token (fixed at rollout time), 0 on padding
    ref_logprobs: Tensor  # [N, R] ln π_ref per response token, 0 on padding
    rewards: Tensor  # [N] raw reward r(x, y) (after the no-EOS rule)
    shaped_rewards: Optional[Tensor]  # [N] r̃(x, y) = r − γ·(ln π_t − ln π_ref)
    group_size: int  # samples per prompt
    temperature: float = 1.0  # sampling temperature; log-probs use logits / temperature
    kl_coef: float = 0.0  # γ (β for PPO) used to shape the rewards
    values: Optional[Tensor] = None  # [N, R] critic values V(x, y_<i) at rollout time (critic objectives)
    extras: dict[str, Tensor] = field(default_factory=dict)  # per-row tensors an objective adds in prepare()
    metrics: dict[str, float] = field(default_factory=dict)

    def attach_policy_logprobs(self, old_logprobs: Tensor, entropy: Optional[Tensor] = None) -> "Rollout":
        """Set ``ln π_t`` (``[N, R]``, detached) and what follows from it: the shaped reward
        ``r̃ = r − γ·(ln π_t(y|x) − ln π_ref(y|x))`` and the ``kl/ref``, ``reward/shaped`` and (given the
        per-token ``entropy``) ``gen/entropy`` metrics. Returns the rollout, changed in place."""
        self.old_logprobs = old_logprobs
        self.shaped_rewards = kl_shaped_reward(self.rewards, old_logprobs.sum(-1), self.ref_logprobs.sum(-1),
                                               self.kl_coef)
        self.metrics["reward/shaped"] = self.shaped_rewards.mean().item()
        self.metrics["kl/ref"] = (old_logprobs - self.ref_logprobs).sum(-1).mean().item()
        if entropy is not None:
            self.metrics["gen/entropy"] = masked_mean(entropy, self.response_mask).item()
        return self
