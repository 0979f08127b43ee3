"""Shared maths: response log-probs, masked reductions and KL estimators.

Sequence layout used everywhere: ``input_ids`` is ``[N, P + R]``, a left-padded prompt block of
width ``P`` followed by a right-padded response block of width ``R``. ``attention_mask`` marks real
tokens in both blocks; the response mask is ``attention_mask[:, P:]``. Position ids are taken from
the attention mask, so left padding does not shift positions and padded rows give the same numbers
as unpadded ones.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

KLEstimator = Literal["k1", "k2", "k3"]


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only: ``[0, 0, 0, 1, 2]`` for mask ``[0, 0, 1, 1, 1]``."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def masked_sum(values: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """``Σ values·mask`` along ``dim``."""
    return (values * mask).sum(dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` where ``mask`` is 1 (over all elements when ``dim`` is None); 0 if empty."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def token_logprobs_from_logits(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
    """``ln softmax(logits / T)[label]`` per position, in float32. ``logits`` ``[N, R, V]``, ``labels`` ``[N, R]``."""
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    return torch.gather(logits.log_softmax(-1), -1, labels.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy of ``softmax(logits / T)`` per position, ``[N, R]``."""
    logp = (logits.float() / temperature).log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def _response_logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, prompt_length: int) -> Tensor:
    """Logits that predict the ``R`` response tokens, ``[N, R, V]`` (only those are materialised when possible)."""
    response_width = input_ids.shape[1] - prompt_length
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask,
                  position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    try:
        logits = model(**kwargs, logits_to_keep=response_width + 1).logits
    except TypeError:  # models without ``logits_to_keep``
        logits = model(**kwargs).logits
    return logits[:, -(response_width + 1):-1]


def response_logprobs(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, prompt_length: int,
                      temperature: float = 1.0, with_entropy: bool = False,
                      entropy_grad: bool = True) -> tuple[Tensor, Tensor | None]:
    """Per-token ``ln π(y_i | x, y_<i)`` over the response block, zero on padding.

    Returns ``(logprobs [N, R], entropy [N, R] or None)``; sum over the last dim for ``ln π(y|x)``.
    The entropy carries gradients when grad is enabled and ``entropy_grad`` (for an entropy bonus);
    ``entropy_grad=False`` gives it detached, for metrics.
    """
    logits = _response_logits(model, input_ids, attention_mask, prompt_length)
    labels = input_ids[:, prompt_length:]
    mask = attention_mask[:, prompt_length:].to(logits.dtype if logits.is_floating_point() else torch.float32)
    logprobs = token_logprobs_from_logits(logits, labels, temperature) * mask.float()
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(torch.is_grad_enabled() and entropy_grad):
            entropy = entropy_from_logits(logits, temperature) * mask.float()
    return logprobs, entropy


def kl_per_token(logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator = "k1") -> Tensor:
    """KL(π‖π_ref) estimators per token from samples of π, with ``ln ρ = ln π_ref − ln π``.

    k1 = −ln ρ, k2 = ½(ln ρ)², k3 = ρ − 1 − ln ρ (unbiased and non-negative).
    """
    log_ratio = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.pow(2)
    if estimator == "k3":
        return log_ratio.exp() - 1 - log_ratio
    raise ValueError(f"unknown KL estimator '{estimator}' (use k1, k2 or k3)")


def kl_shaped_reward(reward: Tensor, logprob_sum: Tensor, ref_logprob_sum: Tensor, kl_coef: float) -> Tensor:
    """Sequence-level shaping ``r̃ = r − γ·(ln π_t(y|x) − ln π_ref(y|x))``, all ``[N]``."""
    return reward - kl_coef * (logprob_sum - ref_logprob_sum)


def sequence_nll(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Language-modelling loss: mean token negative log-likelihood ``−(1/T)·Σ_t ln π(x_t | x_<t)``.

    ``input_ids``/``attention_mask`` ``[N, L]`` (any padding side); every real token that follows a
    real token is predicted, and the mean runs over all of them in the batch (0 for an empty batch).
    Used for SFT and for InstructGPT's pretraining-mix (ptx) term; carries grad when grad is enabled.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids_from_mask(attention_mask), use_cache=False).logits
    logprobs = token_logprobs_from_logits(logits[:, :-1], input_ids[:, 1:])  # [N, L−1] predicts x_1 … x_{L−1}
    mask = (attention_mask[:, 1:] * attention_mask[:, :-1]).float()  # target and its context both real
    return -masked_mean(logprobs, mask)
