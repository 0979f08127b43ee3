"""The online batch types: :class:`Samples` (what a rollout callback generated and scored) and
:class:`Rollout` (the samples plus the policy's log-probs and the shaped reward: what objectives see).

Shapes: ``N = num_prompts · group_size`` rows, ``L = P + R`` tokens (a left-padded prompt block of
width ``P``, a right-padded response block of width ``R``).
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field, fields
from typing import Optional

from torch import Tensor

from rlhf_lightning.batches import GroupedRows
from rlhf_lightning.logprobs import kl_shaped_reward, masked_mean


@dataclass
class Samples(GroupedRows):
    """Responses of ``π_t`` for a batch of prompts, scored, before the policy's own log-probs.

    A rollout callback builds one per rollout batch; ``RLHFModule.training_step`` turns it into a
    :class:`Rollout` with :meth:`with_policy_logprobs`.
    """

    input_ids: Tensor  # [N, L] prompt + response tokens (pad after EOS)
    attention_mask: Tensor  # [N, L] 1 on real prompt and response tokens
    prompt_length: int  # P
    ref_logprobs: Tensor  # [N, R] ln π_ref per response token, 0 on padding
    rewards: Tensor  # [N] raw reward r(x, y) (after the no-EOS rule)
    group_size: int  # responses per prompt (samples of π_t, then data-set responses)
    temperature: float = 1.0  # sampling temperature; log-probs use logits / temperature
    kl_coef: float = 0.0  # γ (β for PPO) that shapes the rewards
    values: Optional[Tensor] = None  # [N, R] critic values V(x, y_<i) at rollout time (critic objectives)
    extras: dict[str, Tensor] = field(default_factory=dict)  # per-row tensors an objective adds in prepare()
    metrics: dict[str, float] = field(default_factory=dict)  # scalars logged with the step

    def with_policy_logprobs(self, old_logprobs: Tensor, entropy: Optional[Tensor] = None) -> "Rollout":
        """The :class:`Rollout` of these samples: ``ln π_t`` (``[N, R]``, detached) and what follows from it,
        the shaped reward ``r̃ = r − γ·(ln π_t(y|x) − ln π_ref(y|x))`` and the ``kl/ref``, ``reward/shaped``
        and (given the per-token ``entropy``) ``gen/entropy`` metrics."""
        shaped = kl_shaped_reward(self.rewards, old_logprobs.sum(-1), self.ref_logprobs.sum(-1), self.kl_coef)
        metrics = dict(self.metrics)
        metrics["reward/shaped"] = shaped.mean().item()
        metrics["kl/ref"] = (old_logprobs - self.ref_logprobs).sum(-1).mean().item()
        if entropy is not None:
            metrics["gen/entropy"] = masked_mean(entropy, self.response_mask).item()
        own = {f.name: getattr(self, f.name) for f in fields(Samples)}
        return Rollout(**{**own, "extras": dict(self.extras), "metrics": metrics},
                       old_logprobs=old_logprobs, shaped_rewards=shaped)


@dataclass
class Rollout(Samples):
    """Scored samples with ``ln π_t`` and the shaped reward: every field is set when an objective sees it."""

    _: KW_ONLY
    old_logprobs: Tensor  # [N, R] ln π_t per response token (fixed for the rollout batch), 0 on padding
    shaped_rewards: Tensor  # [N] r̃(x, y) = r − γ·(ln π_t(y|x) − ln π_ref(y|x))
