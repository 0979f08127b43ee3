"""Online (iterative) DPO: DPO on pairs sampled from ``π_t``, ranked by the reward (Gao et al., 2024, Eq. 21)."""

from __future__ import annotations

import math
import torch
from torch import Tensor

from rlhf_lightning.errors import raise_all
from rlhf_lightning.logprobs import masked_sum
from rlhf_lightning.objectives.base import Needs, Objective
from rlhf_lightning.pairwise import sigmoid_loss
from rlhf_lightning.rollout import Rollout


class OnlineDPO(Objective):
    """DPO on fresh on-policy pairs, with the rollout policy ``π_t`` as the reference.

    For two responses ``y, y′ ~ π_t(·|x)`` the one with the higher shaped reward ``r̃`` is ``y_w``,
    the other ``y_l`` (REBEL paper, Appendix F.1.3, Eq. 21: ``sgn(r̃(x, y) − r̃(x, y′))`` labels the pair)::

        h    = [ln π_θ(y_w|x) − ln π_t(y_w|x)] − [ln π_θ(y_l|x) − ln π_t(y_l|x)]
        L(θ) = mean over non-tied pairs of  −(1 − ε)·ln σ(β·h) − ε·ln σ(−β·h)

    Pairs with equal ``r̃`` carry no preference and are left out (if every pair ties the loss is 0).
    Like REBEL, each rollout batch is optimised for ``inner_epochs`` passes with ``π_t`` fixed, then
    ``π_t ← π_θ``; unlike REBEL it keeps only the sign of the reward difference, not its size.
    Paper (TL;DR): β = 0.05, 4 inner epochs, KL coefficient 0.05 in ``r̃``.

    Args:
        beta: β, the inverse temperature of DPO's implicit reward ``β·ln(π_θ/π_t)``.
        label_smoothing: ε in ``[0, 0.5)``: each preference label is taken to be wrong with probability ε.
        inner_epochs: passes over each rollout batch.
        num_minibatches: optimizer steps per pass.
    """

    needs = Needs(samples_per_prompt=2)

    def __init__(self, beta: float = 0.05, label_smoothing: float = 0.0, inner_epochs: int = 4,
                 num_minibatches: int = 1) -> None:
        super().__init__(inner_epochs=inner_epochs, num_minibatches=num_minibatches)
        errors = []
        if not (math.isfinite(beta) and beta > 0):
            errors.append(self.field_error("beta", f"must be > 0, got {beta}", "the paper uses 0.05"))
        if not 0.0 <= label_smoothing < 0.5:
            errors.append(self.field_error("label_smoothing", f"must be in [0, 0.5), got {label_smoothing}",
                                           "use 0 for plain DPO"))
        raise_all(errors)
        self.beta = beta
        self.label_smoothing = label_smoothing

    def chunk_weight(self, chunk: Rollout, whole: Rollout) -> float:
        """The loss averages over non-tied pairs: weight micro-batches by their share of those."""
        def decided(part: Rollout) -> Tensor:
            rewards = part.shaped_rewards.view(-1, 2)
            return (rewards[:, 0] != rewards[:, 1]).sum()

        return float(decided(chunk) / decided(whole).clamp(min=1))

    def loss(self, logprobs: Tensor, rollout: Rollout) -> tuple[Tensor, dict[str, Tensor]]:
        if rollout.group_size != 2:
            raise ValueError(f"OnlineDPO compares pairs of responses to the same prompt; got a rollout with "
                             f"{rollout.group_size} responses per prompt (declare needs = Needs(samples_per_prompt=2))")
        mask = rollout.response_mask  # [N, R]
        log_ratio = masked_sum(logprobs - rollout.old_logprobs, mask).view(-1, 2)  # [G, 2] ln π_θ − ln π_t
        rewards = rollout.shaped_rewards.view(-1, 2)  # [G, 2] r̃
        sign = torch.sign(rewards[:, 0] - rewards[:, 1])  # [G] +1: y wins, −1: y′ wins, 0: tie
        h = sign * (log_ratio[:, 0] - log_ratio[:, 1])  # [G] winner minus loser
        decided = (sign != 0).float()  # [G]
        num_decided = decided.sum().clamp(min=1.0)
        loss = (sigmoid_loss(h, self.beta, self.label_smoothing) * decided).sum() / num_decided
        h = h.detach()
        metrics = {
            "loss/online_dpo": loss.detach(),
            "dpo/margin": (h * decided).sum() / num_decided,
            "dpo/accuracy": ((h > 0).float() * decided).sum() / num_decided,
            "dpo/tie_share": 1.0 - decided.mean(),
        }
        return loss, metrics
