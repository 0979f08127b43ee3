"""REBEL: REgression to RElative REward Based RL (Gao et al., 2024, Eq. 1)."""

from __future__ import annotations

import torch
from torch import Tensor

from rlhf_lightning.logprobs import masked_sum
from rlhf_lightning.objectives.base import Objective
from rlhf_lightning.rollout import Rollout


class REBEL(Objective):
    """Least-squares regression of relative rewards onto relative log-ratios.

    For two responses ``y, y′`` to the same prompt ``x``, both sampled from ``π_t``::

        L(θ) = E[ ( 1/η · [ (ln π_θ(y|x) − ln π_t(y|x)) − (ln π_θ(y′|x) − ln π_t(y′|x)) ]
                    − (r̃(x, y) − r̃(x, y′)) )² ]

    with ``r̃`` the KL-shaped reward from the rollout. Each rollout batch is optimised for
    ``inner_epochs`` passes with ``π_t`` fixed (paper, TL;DR: η = 1.0, 4 epochs).

    Args:
        eta: η, the step size of the mirror-descent update that the regression solves.
        inner_epochs: passes over each rollout batch.
        num_minibatches: optimizer steps per pass.
    """

    samples_per_prompt = 2

    def __init__(self, eta: float = 1.0, inner_epochs: int = 4, num_minibatches: int = 1) -> None:
        super().__init__(inner_epochs=inner_epochs, num_minibatches=num_minibatches)
        if not eta > 0:
            raise self.field_error("eta", f"must be > 0, got {eta}", "the paper uses 1.0")
        self.eta = eta

    def loss(self, logprobs: Tensor, rollout: Rollout) -> tuple[Tensor, dict[str, Tensor]]:
        if rollout.group_size != 2:
            raise ValueError(f"REBEL regresses pairs of responses to the same prompt; got a rollout with "
                             f"{rollout.group_size} responses per prompt (set samples_per_prompt = 2)")
        mask = rollout.response_mask  # [N, R]
        log_ratio = masked_sum(logprobs - rollout.old_logprobs, mask)  # [N] ln π_θ(y|x) − ln π_t(y|x)
        pairs = log_ratio.view(-1, 2)  # [G, 2] (y, y′) of each prompt
        rewards = rollout.shaped_rewards.view(-1, 2)  # [G, 2]
        predicted = (pairs[:, 0] - pairs[:, 1]) / self.eta  # [G]
        target = rewards[:, 0] - rewards[:, 1]  # [G]
        loss = (predicted - target).pow(2).mean()
        metrics = {
            "loss/rebel": loss.detach(),
            "rebel/predicted_diff": predicted.detach().abs().mean(),
            "rebel/target_diff": target.detach().abs().mean(),
            "rebel/log_ratio": log_ratio.detach().mean(),
        }
        return loss, metrics
