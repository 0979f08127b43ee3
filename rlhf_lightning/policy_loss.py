"""Shared policy-gradient loss pieces: the clipped surrogate of PPO and GRPO, token reductions, and the
advantage-weighted log-likelihood of REINFORCE and RLOO."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

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
