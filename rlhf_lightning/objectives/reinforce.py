"""REINFORCE with a moving-average baseline (Williams, 1992; Ahmadian et al., 2024, "Back to Basics")."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from rlhf_lightning.advantages import masked_whiten
from rlhf_lightning.errors import RecipeError
from rlhf_lightning.objectives.base import Needs, Objective
from rlhf_lightning.policy_loss import advantage_weighted_loss
from rlhf_lightning.rollout import Rollout


class REINFORCE(Objective):
    """Sequence-level policy gradient with an exponential-moving-average baseline::

        L(θ) = −E[ (r̃(x, y) − b) · ln π_θ(y|x) ],     ln π_θ(y|x) = Σ_t ln π_θ(y_t | x, y_<t)

    with ``r̃`` the KL-shaped reward of the rollout and ``b`` a moving average of the mean shaped
    reward of past rollout batches (Williams, 1992; the REBEL paper's REINFORCE baseline, Gao et al.,
    2024, Appendix F; Ahmadian et al., 2024). Gradient: ``∂L/∂ln π_θ(y_t|…) = −(r̃ − b)/N`` on every
    real token of each of the ``N`` responses.

    The baseline of a batch is the one from **before** that batch is seen, so a sample's own reward never
    enters its baseline (the estimator stays unbiased); it is then updated with the batch's mean shaped
    reward over all processes, ``m``: ``b ← decay·b + (1 − decay)·m``. Before the first batch there is no
    estimate: that batch uses ``b = 0`` and sets ``b = m`` (no decay toward the arbitrary start).
    ``b`` and the number of batches seen are buffers, so checkpoints carry them.

    Args:
        baseline_decay: ``decay`` of the moving average, in ``[0, 1)`` (0 = the previous batch's mean).
        whiten_advantages: whiten ``r̃ − b`` to zero mean and unit variance over the batch (all
            processes). The batch mean then replaces ``b`` as the centre; ``b`` is still tracked and logged.
        inner_epochs: passes over each rollout batch (the paper: 1; later passes reuse the same
            advantages without importance weights).
        num_minibatches: optimizer steps per pass.
    """

    needs = Needs(samples_per_prompt=1)

    def __init__(self, baseline_decay: float = 0.9, whiten_advantages: bool = False, inner_epochs: int = 1,
                 num_minibatches: int = 1) -> None:
        errors: list[RecipeError] = []
        if not 0.0 <= baseline_decay < 1.0:
            errors.append(self.field_error("baseline_decay", f"must be in [0, 1), got {baseline_decay}",
                                           "e.g. 0.9 (a moving average over about 10 rollout batches)"))
        super().__init__(inner_epochs=inner_epochs, num_minibatches=num_minibatches, problems=errors)
        self.baseline_decay = baseline_decay
        self.whiten_advantages = whiten_advantages
        self.register_buffer("baseline", torch.zeros(()))  # b, the moving average of the mean r̃
        self.register_buffer("baseline_updates", torch.zeros((), dtype=torch.long))  # batches folded into b

    def update_baseline(self, batch_mean: Tensor) -> None:
        """Fold one batch's (global) mean shaped reward into ``b``."""
        batch_mean = batch_mean.to(self.baseline)
        if int(self.baseline_updates) == 0:
            self.baseline.copy_(batch_mean)
        else:
            self.baseline.mul_(self.baseline_decay).add_((1.0 - self.baseline_decay) * batch_mean)
        self.baseline_updates.add_(1)

    def prepare(self, rollout: Rollout, reduce_sum: Callable[[Tensor], Tensor]) -> Rollout:
        shaped = rollout.shaped_rewards.float()  # [N] r̃
        baseline = self.baseline.to(shaped.device).clone()  # b from before this batch
        advantages = shaped - baseline  # [N]
        if self.whiten_advantages:
            advantages = masked_whiten(advantages, torch.ones_like(advantages), reduce_sum)
        totals = reduce_sum(torch.stack([shaped.sum(), torch.tensor(float(shaped.numel()), device=shaped.device)]))
        self.update_baseline(totals[0] / totals[1].clamp(min=1))
        rollout.extras["advantages"] = advantages
        rollout.metrics["reinforce/baseline"] = float(baseline)
        rollout.metrics["reinforce/advantage_mean"] = advantages.mean().item()
        rollout.metrics["reinforce/advantage_std"] = advantages.std().item() if advantages.numel() > 1 else 0.0
        return rollout

    def loss(self, logprobs: Tensor, rollout: Rollout) -> tuple[Tensor, dict[str, Tensor]]:
        return advantage_weighted_loss(logprobs, rollout, type(self).__name__, "reinforce")

