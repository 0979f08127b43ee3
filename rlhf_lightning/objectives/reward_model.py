"""Reward model training on preference pairs with the Bradley–Terry likelihood (Ouyang et al., 2022, Eq. 1)."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_accuracy

from rlhf_lightning.batches import SequenceBatch
from rlhf_lightning.errors import RecipeError, raise_all
from rlhf_lightning.objectives.base import Needs, Objective
from rlhf_lightning.pairwise import sigmoid_loss


class BradleyTerry(Objective):
    """Pairwise logistic loss on a scalar reward head (Bradley & Terry, 1952; Ouyang et al., 2022)::

        P(y_w ≻ y_l | x) = σ(r(x, y_w) − r(x, y_l))
        L(φ) = −mean over pairs of  ln σ(r_w − r_l − m)  [+ c · mean over pairs of (r_w + r_l)²]

    ``r`` is the scalar head at the last real token of prompt + response (the module loads the
    policy as a one-output sequence-classification model and passes ``scores`` ``[N]``; rows come
    in pairs, chosen then rejected). ``m = 0`` unless ``margin`` is set: then ``m`` is the pair's
    preference margin from the data (``batch.extras["margin"]``), as in Llama 2's reward models
    (Touvron et al., 2023, Eq. 2), so that clearly-better responses must win by more. The optional
    ``c·(r_w + r_l)²`` term pins the otherwise free offset of the rewards near 0 (the
    "reward centering" auxiliary loss of Eisenstein et al., 2023, TRL's ``center_rewards_coefficient``).
    Gradient of the logistic term: ``∂L/∂r_w = −σ(−(r_w − r_l − m))/G = −∂L/∂r_l`` for ``G`` pairs.
    InstructGPT puts all ``C(K, 2)`` comparisons of a prompt in one batch element; here each pair is
    a group of two rows, and the data module decides which pairs make a batch.

    Metrics: ``loss/reward_model`` (the total loss), ``rm/accuracy`` (share of pairs with
    ``r_w > r_l``, ties count as wrong; torchmetrics' binary accuracy on the comparison),
    ``rm/margin`` (mean ``r_w − r_l``, without ``m``), ``rm/chosen`` and ``rm/rejected`` (mean
    rewards). The validation value of ``rm/accuracy`` goes to ``summary.json`` as ``rm_accuracy``.

    Args:
        margin: subtract the per-pair margin ``batch.extras["margin"]`` (``[N]``, the pair's value
            repeated on both rows; read from the chosen row) inside the sigmoid. The batch must have it.
        center_coef: ``c ≥ 0``, the weight of the centering term ``mean((r_w + r_l)²)``; 0 turns it off
            (TRL suggests 0.01 when it is used).
    """

    needs = Needs(rollout=False, reference=False, head="scalar")
    summary_metrics = {"rm/accuracy": "rm_accuracy"}

    def __init__(self, margin: bool = False, center_coef: float = 0.0) -> None:
        super().__init__()
        errors: list[RecipeError] = []
        if not isinstance(margin, bool):
            errors.append(self.field_error("margin", f"must be true or false, got {margin!r}",
                                           "true to use the data's per-pair margins (Llama 2), false otherwise"))
        if not (isinstance(center_coef, (int, float)) and math.isfinite(center_coef) and center_coef >= 0):
            errors.append(self.field_error("center_coef", f"must be a finite number ≥ 0, got {center_coef!r}",
                                           "0 turns centering off; 0.01 is a common value"))
        raise_all(errors)
        self.margin = margin
        self.center_coef = float(center_coef)

    def loss(self, logprobs: Tensor | None, batch: SequenceBatch,
             **outputs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if batch.group_size != 2:
            raise ValueError(f"BradleyTerry compares preference pairs (group_size 2: chosen row, then rejected "
                             f"row), got groups of {batch.group_size} rows; use a preference data module")
        if "scores" not in outputs:
            raise ValueError("BradleyTerry needs the reward head's scores (loss(..., scores=[N])); the module passes "
                             "them when the objective declares Needs(head='scalar')")
        rewards = outputs["scores"].float().view(-1, 2)  # [G, 2] chosen, rejected
        chosen, rejected = rewards[:, 0], rewards[:, 1]  # [G]
        difference = chosen - rejected  # [G] r_w − r_l
        logits = difference
        if self.margin:
            if "margin" not in batch.extras:
                raise self.field_error("margin", "is true, but the batch has no per-pair margins "
                                       "(batch.extras['margin'])",
                                       "use a preference data set with margins, or set margin: false")
            logits = difference - batch.extras["margin"].to(difference).view(-1, 2)[:, 0]  # [G] r_w − r_l − m
        loss = sigmoid_loss(logits, beta=1.0).mean()  # −ln σ(r_w − r_l − m), stable for large |·|
        if self.center_coef:
            loss = loss + self.center_coef * (chosen + rejected).pow(2).mean()
        difference = difference.detach()
        wins = (difference > 0).long()  # [G] a tie is a wrong ranking
        metrics = {
            "loss/reward_model": loss.detach(),
            "rm/accuracy": binary_accuracy(wins, torch.ones_like(wins), validate_args=False),
            "rm/margin": difference.mean(),
            "rm/chosen": chosen.detach().mean(),
            "rm/rejected": rejected.detach().mean(),
        }
        return loss, metrics
