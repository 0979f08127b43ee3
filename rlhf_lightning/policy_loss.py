"""Shared policy-gradient loss pieces: the clipped surrogate of PPO and GRPO, token reductions, the
advantage-weighted log-likelihood of REINFORCE and RLOO, and the critic's value loss of PPO and APA."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Optional

import torch
from torch import Tensor

from rlhf_lightning.logprobs import masked_mean, masked_sum

if TYPE_CHECKING:
    from rlhf_lightning.rollout import Rollout

TokenReduction = Literal["token_mean", "sequence_mean", "constant"]


def clipped_surrogate(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, clip_ratio: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token ``max(−Â·ρ, −Â·clip(ρ, 1−ε, 1+ε))`` with ``ρ = π_θ/π_t``; all ``[N, R]``.

    Returns ``(loss, ratio, clipped)`` where ``clipped`` marks tokens whose clipped term was used.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped_term = -advantages * ratio.clamp(1.0 - clip_ratio, 1.0 + clip_ratio)
    loss = torch.maximum(unclipped, clipped_term)
    return loss, ratio, (clipped_term > unclipped)


def reduce_tokens(values: Tensor, mask: Tensor, reduction: TokenReduction = "token_mean",
                  constant: float | None = None) -> Tensor:
    """Reduce a per-token loss ``[N, R]`` to a scalar.

    ``token_mean``: mean over all real tokens of the batch; ``sequence_mean``: mean over tokens of
    each response, then over responses (GRPO); ``constant``: sum over tokens divided by
    ``N · constant`` (Dr. GRPO, ``constant`` defaults to ``R``), free of any length bias.
    """
    if reduction == "token_mean":
        return masked_mean(values, mask)
    if reduction == "sequence_mean":
        return masked_mean(values, mask, dim=-1).mean()
    if reduction == "constant":
        return (values * mask).sum() / (values.shape[0] * (constant or values.shape[1]))
    raise ValueError(f"unknown token reduction '{reduction}'")


def advantage_weighted_loss(logprobs: Tensor, rollout: "Rollout", name: str,
                            namespace: str) -> tuple[Tensor, dict[str, Tensor]]:
    """``L = −mean_i[A_i · ln π_θ(y_i|x)]`` with the advantages ``prepare`` stored (REINFORCE, RLOO)."""
    advantages = prepared_advantages(rollout, name)  # [N]
    sequence_logprobs = masked_sum(logprobs, rollout.response_mask)  # [N] ln π_θ(y|x)
    loss = -(advantages * sequence_logprobs).mean()
    return loss, {"loss/policy": loss.detach(), f"{namespace}/logprob": sequence_logprobs.detach().mean()}


def prepared_advantages(rollout: "Rollout", name: str) -> Tensor:
    """The ``[N]`` advantages that an objective's ``prepare`` stored in ``rollout.extras`` (detached)."""
    if "advantages" not in rollout.extras:
        raise RuntimeError(f"{name}.loss needs the advantages that {name}.prepare(rollout, reduce_sum) puts in "
                           "rollout.extras; call prepare once per rollout batch first (RLHFModule does)")
    return rollout.extras["advantages"].detach()


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
               value_clip: Optional[float]) -> tuple[Tensor, Tensor]:
    """The critic's loss ``½·mean_i max((V_θ − R)², (V_clip − R)²)`` over the real tokens (PPO, APA).

    ``V_clip = V_t + clip(V_θ − V_t, −ε_v, ε_v)`` with ``V_t`` = ``old_values``; ``value_clip=None`` gives
    the plain ``½·mean (V_θ − R)²``. Inputs ``[N, R]`` with padding already zeroed. Returns ``(loss,
    clipped)``, ``clipped`` marking the tokens whose clipped error was the larger.
    """
    error = (values - returns).pow(2)  # [N, R]
    if value_clip is not None:
        clipped_values = old_values + (values - old_values).clamp(-value_clip, value_clip)
        clipped_error = (clipped_values - returns).pow(2)
        clipped = clipped_error > error
        error = torch.maximum(error, clipped_error)
    else:
        clipped = torch.zeros_like(mask, dtype=torch.bool)
    return 0.5 * masked_mean(error, mask), clipped


def value_metrics(values: Tensor, returns: Tensor, mask: Tensor, clipped: Tensor) -> dict[str, Tensor]:
    """The critic's detached logs: explained variance of the returns, mean value, value-clip fraction."""
    with torch.no_grad():
        residual_variance = masked_variance(returns - values, mask)
        return {
            "value/explained_variance": 1.0 - residual_variance / masked_variance(returns, mask).clamp(min=1e-8),
            "value/mean": masked_mean(values, mask),
            "value/clip_fraction": masked_mean(clipped.float(), mask),
        }


def masked_variance(values: Tensor, mask: Tensor) -> Tensor:
    """Population variance of ``values`` over the masked elements (0 if fewer than one)."""
    mean = masked_mean(values, mask)
    return masked_mean((values - mean).pow(2), mask)
