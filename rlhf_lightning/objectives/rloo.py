"""RLOO: REINFORCE Leave-One-Out (Kool et al., 2019; Ahmadian et al., 2024)."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from torch import Tensor

from rlhf_lightning.advantages import leave_one_out_advantages
from rlhf_lightning.errors import RecipeError
from rlhf_lightning.objectives.base import Needs, Objective
from rlhf_lightning.policy_loss import advantage_weighted_loss
from rlhf_lightning.rollout import Rollout


class RLOO(Objective):
    """REINFORCE with ``k`` samples per prompt, each baselined by the mean of the other ``k − 1``::

        A_i  = r̃_i − 1/(k−1) · Σ_{j≠i} r̃_j                (within the k samples of one prompt)
        L(θ) = −E[ A_i · ln π_θ(y_i|x) ],    ln π_θ(y_i|x) = Σ_t ln π_θ(y_{i,t} | x, y_{i,<t})

    with ``r̃`` the KL-shaped reward of the rollout ("Buy 4 REINFORCE samples, get a baseline for
    free", Kool et al., 2019; used as a baseline in the REBEL paper, Gao et al., 2024, with k = 2 and 4).
    The baseline of a sample never contains its own reward, so the gradient estimate is unbiased.
    Gradient: ``∂L/∂ln π_θ(y_{i,t}|…) = −A_i/N`` on every real token of each of the ``N`` responses.
    With ``k = 2`` this is ``A = ±(r̃_0 − r̃_1)``.

    Args:
        k: samples per prompt (≥ 2); the REBEL paper runs k = 2 and k = 4.
        inner_epochs: passes over each rollout batch (the paper: 1; later passes reuse the same
            advantages without importance weights).
        num_minibatches: optimizer steps per pass.
    """

    needs = Needs(samples_per_prompt=2)  # samples_per_prompt is replaced by ``k`` on each instance

    def __init__(self, k: int = 2, inner_epochs: int = 1, num_minibatches: int = 1) -> None:
        errors: list[RecipeError] = []
        if k < 2:
            errors.append(self.field_error("k", f"must be ≥ 2 (a leave-one-out baseline needs another sample of "
                                                f"the same prompt), got {k}", "set k to 2 or 4, as in the paper"))
        super().__init__(inner_epochs=inner_epochs, num_minibatches=num_minibatches, problems=errors)
        self.k = k
        self.needs = replace(self.needs, samples_per_prompt=k)

    def prepare(self, rollout: Rollout, reduce_sum: Callable[[Tensor], Tensor]) -> Rollout:
        advantages = leave_one_out_advantages(rollout.shaped_rewards.float(), rollout.group_size)  # [N]
        rollout.extras["advantages"] = advantages
        rollout.metrics["rloo/advantage_std"] = advantages.std().item() if advantages.numel() > 1 else 0.0
        rollout.metrics["rloo/advantage_abs"] = advantages.abs().mean().item()
        return rollout

    def loss(self, logprobs: Tensor, rollout: Rollout) -> tuple[Tensor, dict[str, Tensor]]:
        return advantage_weighted_loss(logprobs, rollout, type(self).__name__, "rloo")
