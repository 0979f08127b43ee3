"""Shared policy-gradient loss pieces: the clipped surrogate of PPO and GRPO, and token reductions."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from rlhf_lightning.logprobs import masked_mean

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
