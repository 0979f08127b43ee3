"""Shared maths: response log-probs, masked reductions and KL estimators.

Sequence layout used everywhere: ``input_ids`` is ``[N, P + R]``, a left-padded prompt block of
width ``P`` followed by a right-padded response block of width ``R``. ``attention_mask`` marks real
tokens in both blocks; the response mask is ``attention_mask[:, P:]``. Position ids are taken from
the attention mask, so left padding does not shift positions and padded rows give the same numbers
as unpadded ones.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import Tensor, nn

from rlhf_lightning.response_forward import position_ids_from_mask, response_logit_parts, trim_padding

__all__ = ["position_ids_from_mask"]  # kept importable from here

KLEstimator = Literal["k1", "k2", "k3"]


def masked_sum(values: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """``Σ values·mask`` along ``dim``."""
    return (values * mask).sum(dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` where ``mask`` is 1 (over all elements when ``dim`` is None); 0 if empty."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


CHUNK_ELEMENTS = 1 << 18
"""Logits processed at a time by :func:`token_logprobs_from_logits` (rows × vocabulary, about 1 MB in float32)."""


def _row_chunks(rows: int, vocab: int) -> list[tuple[int, int]]:
    step = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    return [(start, min(start + step, rows)) for start in range(0, rows, step)]


class _ChosenTokenLogprob(torch.autograd.Function):
    """``ln softmax(x / T)[y] = x_y / T − logsumexp(x / T)`` over ``[M, V]`` logits, chunk by chunk.

    Neither pass materialises a float32 ``[M, V]`` tensor: the forward keeps only the ``[M]`` log-sum-exps;
    the backward writes ``∂/∂x_j = g·(𝟙[j = y] − softmax(x / T)_j) / T`` straight into the gradient, in the
    logits' dtype."""

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, temperature: float, with_entropy: bool) -> tuple[Tensor, Tensor]:
        rows, vocab = logits.shape
        out = torch.empty(rows, dtype=torch.float32, device=logits.device)
        lse = torch.empty(rows, dtype=torch.float32, device=logits.device)
        entropy = torch.zeros(rows if with_entropy else 0, dtype=torch.float32, device=logits.device)
        for start, end in _row_chunks(rows, vocab):
            scaled = logits[start:end].float()
            if temperature != 1.0:
                scaled = scaled / temperature
            lse[start:end] = torch.logsumexp(scaled, -1)
            out[start:end] = scaled.gather(-1, labels[start:end, None]).squeeze(-1) - lse[start:end]
            if with_entropy:  # H = −Σ p·ln p, while the chunk is at hand
                log_p = scaled - lse[start:end, None]
                entropy[start:end] = -(log_p.exp() * log_p).sum(-1)
        ctx.save_for_backward(logits, labels, lse)
        ctx.temperature = temperature
        ctx.mark_non_differentiable(entropy)
        return out, entropy

    @staticmethod
    def backward(ctx, grad_out: Tensor, _grad_entropy: Tensor):
        logits, labels, lse = ctx.saved_tensors
        temperature = ctx.temperature
        grad = torch.empty_like(logits)
        grad_out = grad_out.float()
        for start, end in _row_chunks(*logits.shape):
            g = grad_out[start:end, None]
            scaled = logits[start:end].float()
            if temperature != 1.0:
                scaled = scaled / temperature
            chunk = (scaled - lse[start:end, None]).exp_().mul_(-g)  # −g·softmax (a new tensor: the logits stay)
            chunk.scatter_add_(-1, labels[start:end, None], g)
            if temperature != 1.0:
                chunk.div_(temperature)
            grad[start:end] = chunk
        return grad, None, None, None


def token_logprobs_from_logits(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
    """``ln softmax(logits / T)[label] = logits[label] / T − logsumexp(logits / T)`` per position, in float32.

    ``logits`` ``[..., V]``, ``labels`` ``[...]``. Computed in row chunks, so that no float32 log-softmax over
    the whole vocabulary is materialised for every token (nor its gradient's temporaries): equal to
    ``log_softmax(logits.float() / T).gather(labels)`` to float32 rounding.
    """
    return token_logprobs_and_entropy(logits, labels, temperature, with_entropy=False)[0]


def token_logprobs_and_entropy(logits: Tensor, labels: Tensor, temperature: float = 1.0,
                               with_entropy: bool = True) -> tuple[Tensor, Optional[Tensor]]:
    """:func:`token_logprobs_from_logits` and, in the same pass over each chunk, the detached entropy
    ``H = −Σ_j p_j · ln p_j`` with ``p = softmax(x / T)`` per position (``None`` without ``with_entropy``);
    for an entropy that carries gradients use :func:`entropy_from_logits`."""
    shape = labels.shape
    flat = logits.reshape(-1, logits.shape[-1])
    logprobs, entropy = _ChosenTokenLogprob.apply(flat, labels.reshape(-1), float(temperature), with_entropy)
    return logprobs.view(shape), entropy.view(shape) if with_entropy else None


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy of ``softmax(logits / T)`` per position, ``[N, R]``."""
    logp = (logits.float() / temperature).log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def response_logprobs(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, prompt_length: int,
                      temperature: float = 1.0, with_entropy: bool = False,
                      entropy_grad: bool = True, share_prompts: bool = True) -> tuple[Tensor, Tensor | None]:
    """Per-token ``ln π(y_i | x, y_<i)`` over the response block, zero on padding.

    Returns ``(logprobs [N, R], entropy [N, R] or None)``; sum over the last dim for ``ln π(y|x)``.
    The entropy carries gradients when grad is enabled and ``entropy_grad`` (for an entropy bonus);
    ``entropy_grad=False`` gives it detached, for metrics.

    No padding column is computed, rows are grouped by response length when that pays, and with
    ``share_prompts`` each distinct prompt of consecutive rows is run once
    (:mod:`rlhf_lightning.response_forward`); the numbers equal the plain padded forward's to float rounding,
    gradients included.
    """
    full_width = input_ids.shape[1] - prompt_length
    trimmed = trim_padding(input_ids, attention_mask, prompt_length)
    input_ids, attention_mask, prompt_length = trimmed.input_ids, trimmed.attention_mask, trimmed.prompt_length
    labels, mask = input_ids[:, prompt_length:], attention_mask[:, prompt_length:].float()
    entropy_with_grad = with_entropy and entropy_grad and torch.is_grad_enabled()
    logprob_pieces, entropy_pieces = [], []  # (rows, columns, values [rows, columns])
    for part in response_logit_parts(model, input_ids, attention_mask, prompt_length, share_prompts):
        part_labels, start = labels[part.rows], 0
        for logits in part.blocks:
            columns = torch.arange(start, start + logits.shape[1], device=labels.device)
            start += logits.shape[1]
            values, entropy = token_logprobs_and_entropy(logits, part_labels[:, columns], temperature,
                                                         with_entropy and not entropy_with_grad)
            if entropy_with_grad:  # an entropy bonus: the full softmax with its graph
                entropy = entropy_from_logits(logits, temperature)
            logprob_pieces.append((part.rows, columns, values))
            entropy_pieces.append((part.rows, columns, entropy))

    def assemble(pieces: list) -> Tensor:
        """The pieces in one ``[N, R]`` tensor (zero on padding and on the columns cut as padding)."""
        if len(pieces) == 1 and pieces[0][2].shape == mask.shape:
            values = pieces[0][2]
        else:
            values = mask.new_zeros(mask.shape)
            for rows, columns, piece in pieces:
                values = values.index_put((rows[:, None], columns[None, :]), piece)
        return nn.functional.pad(values * mask, (0, full_width - mask.shape[1]))

    return assemble(logprob_pieces), assemble(entropy_pieces) if with_entropy else None


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
