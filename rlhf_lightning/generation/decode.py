"""Sampling loop that stops computing a row once it has ended.

Hugging Face ``generate`` keeps every row of the batch in each decoding step until the last one ends: a
row that emitted EOS after 10 of 48 tokens is computed 38 more times and its tokens thrown away. Here the
rows that ended leave the batch (their KV cache rows are dropped) once they make up a quarter of it, so
decoding costs about the tokens actually generated. Each token is drawn from ``softmax(logits / T)`` cut
only by top-k / top-p (Hugging Face's own warpers) with EOS forbidden for the first ``min_new_tokens``:
the distribution ``generate`` samples with the same settings.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from rlhf_lightning.generation.base import SamplingParams
from rlhf_lightning.generation.kv_cache import CACHE_ARGUMENT

COMPACT_SHARE = 0.25
"""Ended rows are dropped from the batch once they are at least this share of the rows still computed."""


def _warpers(params: SamplingParams) -> list:
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = []
    if params.temperature not in (0, 1.0):
        warpers.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k:
        warpers.append(TopKLogitsWarper(params.top_k))
    if params.top_p < 1.0:
        warpers.append(TopPLogitsWarper(params.top_p))
    return warpers


def _forward(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, positions: Tensor, cache) -> tuple[Tensor, object]:
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True,
                logits_to_keep=1, **({CACHE_ARGUMENT: cache} if cache is not None else {}))
    return out.logits[:, -1].float(), getattr(out, CACHE_ARGUMENT)


@torch.no_grad()
def sample_dropping_ended(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, params: SamplingParams,
                          eos_ids: tuple[int, ...], pad_token_id: int, cache=None, share_prefill: bool = False,
                          record_logprobs: bool = False) -> tuple[Tensor, Optional[Tensor]]:
    """``params.num_samples = k`` responses per left-padded prompt (``[B, P]`` → ``[B·k, max_new_tokens]``, the
    ``k`` samples of a prompt consecutive, the pad token after each response's end).

    ``cache``: an empty KV cache to fill (the model's default otherwise). ``share_prefill``: run each prompt's
    prefill once and repeat its cache for its ``k`` samples. ``record_logprobs``: also return the sampler's
    ``ln p`` of each drawn token (after the warpers), ``[B·k, max_new_tokens]``.
    """
    from rlhf_lightning.response_forward import position_ids_from_mask

    k, steps = params.num_samples, params.max_new_tokens
    positions = position_ids_from_mask(attention_mask)
    if share_prefill and k > 1:
        logits, cache = _forward(model, input_ids, attention_mask, positions, cache)
        cache.batch_repeat_interleave(k)
        logits = logits.repeat_interleave(k, 0)
        attention_mask, positions = attention_mask.repeat_interleave(k, 0), positions.repeat_interleave(k, 0)
    else:
        input_ids, attention_mask, positions = (t.repeat_interleave(k, 0) for t in (input_ids, attention_mask, positions))
        logits, cache = _forward(model, input_ids, attention_mask, positions, cache)
    rows, device = logits.shape[0], logits.device
    responses = torch.full((rows, steps), pad_token_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(rows, steps, device=device) if record_logprobs else None
    eos = torch.tensor(sorted(set(eos_ids)), device=device)  # forbidden for the first min_new_tokens
    # a sampled pad token ends a response as EOS does (see masks.response_attention_mask): stop computing it
    stops = torch.tensor(sorted({*eos_ids, pad_token_id}), device=device)
    computing = torch.arange(rows, device=device)  # the rows in the batch (and the cache), in order
    running = torch.ones(rows, dtype=torch.bool, device=device)  # of those, the ones that have not ended
    position = positions[:, -1] + 1  # of each row's next token
    warpers, width = _warpers(params), 0
    for step in range(steps):
        scores = logits
        if step < params.min_new_tokens:
            scores = scores.index_fill(-1, eos, float("-inf"))
        for warp in warpers:
            scores = warp(None, scores)
        if params.greedy:
            tokens = scores.argmax(-1)
        else:
            tokens = torch.multinomial(scores.softmax(-1), 1).squeeze(-1)
        tokens = torch.where(running, tokens, pad_token_id)
        live = computing[running]
        responses[live, step] = tokens[running]
        if logprobs is not None:
            logprobs[live, step] = scores.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)[running]
        running = running & ~torch.isin(tokens, stops)
        width = step + 1
        if step == steps - 1 or not bool(running.any()):
            break
        ended = int((~running).sum())
        if ended and ended >= COMPACT_SHARE * len(running):
            keep = running.nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            computing, running, tokens = computing[keep], running[keep], tokens[keep]
            attention_mask, position = attention_mask[keep], position[keep]
        attention_mask = torch.cat([attention_mask, running[:, None].to(attention_mask.dtype)], 1)
        logits, cache = _forward(model, tokens[:, None], attention_mask, position[:, None], cache)
        position = position + 1
    return responses[:, :width], logprobs[:, :width] if logprobs is not None else None
