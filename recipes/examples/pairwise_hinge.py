"""A user-defined objective, named in a recipe by ``class_path: pairwise_hinge.PairwiseHinge``.

Run it (the recipe's folder is put on the import path by ``rlhf-lightning run``)::

    rlhf-lightning run recipes/examples/pairwise_hinge.yaml
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlhf_lightning.logprobs import masked_sum
from rlhf_lightning.objectives import Needs, Objective
from rlhf_lightning.rollout import Rollout


class PairwiseHinge(Objective):
    """Rank the better of two sampled responses above the worse one by a margin.

    For the two responses ``y, y′`` to a prompt, with ``s = sign(r̃(x, y) − r̃(x, y′))``::

        L(θ) = E[ max(0, m − s · [ (ln π_θ(y|x) − ln π_t(y|x)) − (ln π_θ(y′|x) − ln π_t(y′|x)) ]) ]

    Pairs with equal rewards give no gradient.

    Args:
        margin: m, the log-ratio gap to reach before a pair stops contributing.
        inner_epochs: passes over each rollout batch.
    """

    needs = Needs(samples_per_prompt=2)  # the rollout samples two responses per prompt

    def __init__(self, margin: float = 1.0, inner_epochs: int = 2) -> None:
        super().__init__(inner_epochs=inner_epochs)
        if margin <= 0:
            raise self.field_error("margin", f"must be > 0, got {margin}", "e.g. 1.0")
        self.margin = margin

    def loss(self, logprobs: Tensor, rollout: Rollout) -> tuple[Tensor, dict[str, Tensor]]:
        log_ratio = masked_sum(logprobs - rollout.old_logprobs, rollout.response_mask).view(-1, 2)  # [G, 2]
        rewards = rollout.shaped_rewards.view(-1, 2)
        sign = torch.sign(rewards[:, 0] - rewards[:, 1])  # [G]
        gap = sign * (log_ratio[:, 0] - log_ratio[:, 1])
        loss = (torch.relu(self.margin - gap) * sign.abs()).mean()
        return loss, {"loss/pairwise_hinge": loss.detach(), "hinge/active_share": (gap < self.margin).float().mean()}
