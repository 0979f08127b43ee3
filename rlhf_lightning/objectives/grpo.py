"""GRPO: Group Relative Policy Optimization (Shao et al., 2024, DeepSeekMath) and Dr. GRPO (Liu et al., 2025)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, Optional, get_args

import torch
from torch import Tensor

from rlhf_lightning.advantages import group_normalized_advantages
from rlhf_lightning.errors import RecipeError
from rlhf_lightning.logprobs import KLEstimator, kl_per_token, masked_mean
from rlhf_lightning.objectives.base import Needs, Objective
from rlhf_lightning.policy_loss import TokenReduction, clipped_surrogate, prepared_advantages, reduce_tokens
from rlhf_lightning.rollout import Rollout

ADVANTAGE_EPS = 1e-4  # δ in A = (r − mean)/(std + δ): equal rewards in a group give A = 0, not NaN


class GRPO(Objective):
    """PPO's clipped surrogate with a group baseline instead of a critic, and the KL in the loss.

    For each prompt ``x`` the rollout holds ``G`` samples ``y_1..y_G`` of ``π_t`` with raw rewards ``r_i``::

        A_i      = (r_i − mean(r_1..r_G)) / (std(r_1..r_G) + δ)        (given to every token of y_i)
        ρ_{i,t}  = π_θ(y_{i,t}|x, y_{i,<t}) / π_t(y_{i,t}|x, y_{i,<t})
        ℓ_{i,t}  = −min(ρ_{i,t}·A_i, clip(ρ_{i,t}, 1 − ε, 1 + ε)·A_i) + β·k3_{i,t}
        k3_{i,t} = π_ref/π_θ − 1 − ln(π_ref/π_θ)                      (per token, unbiased KL(π_θ‖π_ref))
        L(θ)     = 1/G Σ_i 1/|y_i| Σ_t ℓ_{i,t}                         (``loss_reduction = sequence_mean``)

    (Shao et al., 2024, Eq. 3 and 4; δ = 1e-4.) Per token the gradient is
    ``(−A_i·ρ_{i,t}·[not clipped] + β·(1 − π_ref/π_θ)) / normaliser`` with respect to ``ln π_θ``.

    Dr. GRPO (Liu et al., 2025, "Understanding R1-Zero-Like Training") removes two biases:
    ``scale_rewards=False`` drops the std division (A_i = r_i − mean), and
    ``loss_reduction="constant"`` replaces ``1/|y_i|`` by one constant for every response
    (sum over tokens / (N · ``constant_length``)), so long wrong answers are not favoured.

    GRPO regularises with the KL term in the loss and computes advantages from the **raw** reward
    ``r`` (``rollout.rewards``), not the KL-shaped ``r̃``: it declares ``Needs(kl_in_reward=False)``, so a
    recipe must set ``rollout.init_args.kl_coef: 0`` (a non-zero γ is a recipe error before training).

    Args:
        group_size: samples per prompt ``G`` (≥ 2).
        clip_ratio: ε of the clipped ratio ``clip(ρ, 1 − ε, 1 + ε)``.
        beta: β, weight of the per-token KL estimate in the loss (0 to drop it).
        kl_estimator: ``k3`` (GRPO, unbiased and non-negative), ``k1`` (``ln π_θ − ln π_ref``) or ``k2``
            (``½(ln π_θ − ln π_ref)²``), all with ``π_θ`` the sampling policy.
        scale_rewards: divide the centred rewards by their group's std (GRPO); ``false`` = Dr. GRPO.
        loss_reduction: ``sequence_mean`` (mean over each response's tokens, then over responses: GRPO),
            ``token_mean`` (mean over all tokens of the batch) or ``constant`` (token sum / (N · C): Dr. GRPO).
        constant_length: ``C`` for ``loss_reduction: constant`` (default: the response block width,
            which is ``max_new_tokens`` once any response reaches it; set it to ``max_new_tokens`` to fix it).
        inner_epochs: passes over each rollout batch (μ in the GRPO paper).
        num_minibatches: optimizer steps per pass.
    """

    # samples_per_prompt is replaced by ``group_size`` on each instance; the KL to π_ref is a term of the loss,
    # so the rollout must not shape rewards with γ
    needs = Needs(samples_per_prompt=4, kl_in_reward=False)

    def __init__(self, group_size: int = 4, clip_ratio: float = 0.2, beta: float = 0.04,
                 kl_estimator: KLEstimator = "k3", scale_rewards: bool = True,
                 loss_reduction: TokenReduction = "sequence_mean", constant_length: Optional[int] = None,
                 inner_epochs: int = 1, num_minibatches: int = 1) -> None:
        errors: list[RecipeError] = []
        if group_size < 2:
            errors.append(self.field_error("group_size", f"must be ≥ 2 (advantages compare samples of the same "
                                                         f"prompt), got {group_size}", "e.g. 4, 8 or 16"))
        if not (math.isfinite(clip_ratio) and clip_ratio > 0):
            errors.append(self.field_error("clip_ratio", f"must be > 0, got {clip_ratio}", "the paper uses 0.2"))
        if not (math.isfinite(beta) and beta >= 0):
            errors.append(self.field_error("beta", f"must be ≥ 0, got {beta}", "the paper uses 0.04; 0 drops the KL"))
        if kl_estimator not in get_args(KLEstimator):
            errors.append(self.field_error("kl_estimator", f"unknown estimator '{kl_estimator}'",
                                           "use k3 (GRPO), k1 or k2"))
        if loss_reduction not in get_args(TokenReduction):
            errors.append(self.field_error("loss_reduction", f"unknown reduction '{loss_reduction}'",
                                           "use sequence_mean (GRPO), token_mean or constant (Dr. GRPO)"))
        if constant_length is not None:
            if constant_length < 1:
                errors.append(self.field_error("constant_length", f"must be ≥ 1 or null, got {constant_length}",
                                               "e.g. the Rollout callback's max_new_tokens"))
            if loss_reduction != "constant":
                errors.append(self.field_error("constant_length", f"is only used with loss_reduction: constant, "
                                                                  f"but loss_reduction is '{loss_reduction}'",
                                               "set loss_reduction: constant, or constant_length: null"))
        super().__init__(inner_epochs=inner_epochs, num_minibatches=num_minibatches, problems=errors)
        self.group_size = group_size
        self.needs = replace(self.needs, samples_per_prompt=group_size)
        self.clip_ratio, self.beta, self.kl_estimator = clip_ratio, beta, kl_estimator
        self.scale_rewards, self.loss_reduction, self.constant_length = scale_rewards, loss_reduction, constant_length

    def prepare(self, rollout: Rollout, reduce_sum: Callable[[Tensor], Tensor]) -> Rollout:
        if rollout.group_size < 2:
            raise ValueError(f"GRPO compares samples of the same prompt; got a rollout with {rollout.group_size} "
                             f"response per prompt (group_size ≥ 2)")
        rewards = rollout.rewards.float()  # [N] raw r: GRPO's KL lives in the loss, not in the reward
        advantages = group_normalized_advantages(rewards, rollout.group_size, scale=self.scale_rewards,
                                                 eps=ADVANTAGE_EPS)  # [N]
        rollout.extras["advantages"] = advantages
        spread = rollout.grouped(rewards).std(-1)  # [num_prompts]
        rollout.metrics["grpo/advantage_std"] = advantages.std().item() if advantages.numel() > 1 else 0.0
        rollout.metrics["grpo/advantage_abs"] = advantages.abs().mean().item()
        rollout.metrics["grpo/reward_std"] = spread.mean().item()
        rollout.metrics["grpo/zero_std_groups"] = (spread == 0).float().mean().item()  # groups with no signal
        return rollout

    def chunk_weight(self, chunk, whole) -> float:
        """Exact micro-batching: the token share for ``token_mean``, the row share otherwise."""
        if self.loss_reduction == "token_mean":
            return float(chunk.response_mask.sum() / whole.response_mask.sum().clamp(min=1))
        return super().chunk_weight(chunk, whole)

    def loss(self, logprobs: Tensor, rollout: Rollout) -> tuple[Tensor, dict[str, Tensor]]:
        mask = rollout.response_mask  # [N, R]
        real = mask.bool()
        logprobs = torch.where(real, logprobs, 0.0)  # [N, R] padding (whatever it holds) is out of the maths
        old_logprobs = torch.where(real, rollout.old_logprobs, 0.0)
        ref_logprobs = torch.where(real, rollout.ref_logprobs, 0.0)
        advantages = prepared_advantages(rollout, type(self).__name__)[:, None].expand_as(logprobs)  # [N, R]
        policy_tokens, ratio, clipped = clipped_surrogate(logprobs, old_logprobs, advantages, self.clip_ratio)
        kl_tokens = kl_per_token(logprobs, ref_logprobs, self.kl_estimator)  # [N, R], π_θ is the sampler
        per_token = policy_tokens + self.beta * kl_tokens  # [N, R]
        loss = self._reduce(per_token, mask)
        with torch.no_grad():
            policy_loss = self._reduce(policy_tokens, mask)
            kl = self._reduce(kl_tokens, mask)
            metrics = {
                "loss/total": loss.detach(),
                "loss/policy": policy_loss,
                "loss/kl": self.beta * kl,
                "grpo/kl": kl,
                "grpo/clip_fraction": masked_mean(clipped.float(), mask),
                "grpo/ratio": masked_mean(ratio, mask),
            }
        return loss, metrics

    def _reduce(self, per_token: Tensor, mask: Tensor) -> Tensor:
        return reduce_tokens(per_token, mask, self.loss_reduction, self.constant_length)
