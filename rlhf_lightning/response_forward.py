"""Forward passes that predict a response block and compute no padding and each distinct prompt once.

Rows come as ``[N, P + R]``: a left-padded prompt block of width ``P`` and a right-padded response block
of width ``R`` (see :mod:`rlhf_lightning.logprobs`). Three kinds of work in such a batch are waste, and
:func:`response_logit_parts` skips all three:

* **padding columns**: prompt columns where every row is still padding and response columns after the
  longest response. They are cut off (:func:`trim_padding`); positions come from the attention mask, so
  the numbers do not change.
* **repeated prompts**: the ``k`` samples of a prompt (and the chosen/rejected rows of a preference pair)
  share their prompt block. The model runs over each distinct prompt once, its KV cache is repeated for the
  prompt's rows and only the response tokens run, attending to that cache. With grad on, the gradient flows
  through the repeated cache into the prompt's forward, so the update is the one of the full forward: only
  the repeated work is gone. ``k`` samples of a ``P``-token prompt with ``R``-token responses cost
  ``P + k·R`` tokens instead of ``k·(P + R)``.
* **short responses padded to the longest**: rows are grouped by response length (:func:`length_buckets`)
  when that removes at least 15 % of the computed tokens, and each group runs only to its own longest
  response (padding-free in effect, without packing: attention stays the model's own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from rlhf_lightning.distributed.fsdp import steps_with_other_ranks
from rlhf_lightning.generation.eos import base_model
from rlhf_lightning.generation.kv_cache import CACHE_ARGUMENT

BUCKET_SAVING = 0.15
"""Rows are split by response length only when that cuts the computed tokens by at least this share."""

MIN_SAVED_FLOPS = 2e8
"""A second forward (or a length group) is run only when it saves at least this many FLOPs (2 · parameters ·
tokens not computed): about 6 ms of a 2-core CPU's matmul rate, above what an extra forward call costs in
Python and dispatch. Tiny models (the embedded demo's 137K parameters) therefore keep one forward."""


def _parameters(model: nn.Module) -> int:
    count = getattr(model, "_rlhf_parameter_count", None)
    if count is None:
        count = sum(p.numel() for p in model.parameters())
        try:
            model._rlhf_parameter_count = count
        except AttributeError:  # a wrapper that forbids new attributes: count again next time
            pass
    return count


def saves_enough(model: nn.Module, tokens_saved: int) -> bool:
    """Whether skipping ``tokens_saved`` tokens of ``model``'s forward is worth another forward call."""
    return 2 * _parameters(model) * tokens_saved >= MIN_SAVED_FLOPS


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only: ``[0, 0, 0, 1, 2]`` for mask ``[0, 0, 1, 1, 1]``."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass(frozen=True)
class Trimmed:
    """A batch without its all-padding columns: ``input_ids``/``attention_mask`` ``[N, P' + R']``.

    ``cut_left`` prompt columns and ``cut_right`` response columns were removed (pad a ``[N, R']`` result
    with ``cut_right`` zero columns on the right to get the caller's ``[N, R]`` back)."""

    input_ids: Tensor
    attention_mask: Tensor
    prompt_length: int
    cut_left: int
    cut_right: int


def trim_padding(input_ids: Tensor, attention_mask: Tensor, prompt_length: int) -> Trimmed:
    """Drop prompt columns that are padding in every row and response columns after the longest response.

    The last prompt column (the one that predicts the first response token) and the first response column
    always stay."""
    used = attention_mask.bool().any(0)
    prompt_used = used[:prompt_length].nonzero()
    left = int(prompt_used[0]) if len(prompt_used) else max(prompt_length - 1, 0)
    left = min(left, max(prompt_length - 1, 0))
    response_used = used[prompt_length:].nonzero()
    width = input_ids.shape[1] - prompt_length
    kept = max(int(response_used[-1]) + 1 if len(response_used) else 1, min(1, width))
    right = width - kept
    end = input_ids.shape[1] - right
    return Trimmed(input_ids[:, left:end], attention_mask[:, left:end], prompt_length - left, left, right)


def prompt_owners(input_ids: Tensor, attention_mask: Tensor, prompt_length: int) -> Optional[tuple[Tensor, Tensor]]:
    """``(owner [N], first_rows [G])`` when consecutive rows repeat the same prompt block: ``owner[i]`` is the
    index of row ``i``'s distinct prompt and ``first_rows`` the first row of each; ``None`` when no two
    neighbouring rows share their prompt (nothing to save)."""
    if input_ids.shape[0] < 2 or prompt_length < 1:
        return None
    mask = attention_mask[:, :prompt_length]
    tokens = input_ids[:, :prompt_length] * mask  # padding compares equal whatever id fills it
    same = (tokens[1:] == tokens[:-1]).all(-1) & (mask[1:] == mask[:-1]).all(-1)
    if not bool(same.any()):
        return None
    starts = torch.cat([same.new_ones(1), ~same])
    return starts.long().cumsum(0) - 1, starts.nonzero().squeeze(-1)


def can_share_prompts(model: nn.Module) -> bool:
    """Whether the shared-prompt forward may run on ``model``: a Hugging Face model with a repeatable KV
    cache, no gradient checkpointing (which turns the cache off in training) and weights not sharded over
    processes (where every rank must run the same forwards, whatever its rows)."""
    inner = base_model(model)
    checkpointed = getattr(inner, "is_activation_checkpointing" if hasattr(type(inner), "is_activation_checkpointing")
                           else "is_gradient_checkpointing", False)
    return (hasattr(inner, "generation_config") and not checkpointed
            and getattr(getattr(inner, "config", None), "is_encoder_decoder", False) is False
            and not steps_with_other_ranks(model))


@dataclass
class LogitPart:
    """Logits for some rows of the batch: ``blocks`` (concatenated along dim 1: ``[len(rows), width, V]``)
    predict the first ``width`` response tokens of ``rows``; the rest of those rows' responses is padding."""

    rows: Tensor
    width: int
    blocks: list[Tensor]


def length_buckets(lengths: Sequence[int], per_row: int = 0, most: int = 3,
                   model: Optional[nn.Module] = None) -> Optional[list[list[int]]]:
    """Rows grouped by response length (shortest first) so that each group runs to its own longest response,
    or ``None`` when one group is as good (it must save ≥ :data:`BUCKET_SAVING` of the tokens).

    A group of ``n`` rows whose longest response is ``r`` costs ``n·(per_row + r)`` tokens (``per_row``: the
    prompt width when every row runs its own prompt). Groups hold at least ``max(4, N/8)`` rows, so that
    each forward stays a sizeable matrix product; at most ``most`` groups. With ``model``, the tokens saved must
    also pass :func:`saves_enough`."""
    n = len(lengths)
    smallest = max(4, n // 8)
    if n < 2 * smallest:
        return None
    order = sorted(range(n), key=lambda i: lengths[i])
    ordered = [lengths[i] for i in order]
    step = max(1, n // 32)
    cuts = list(range(smallest, n - smallest + 1, step))

    def cost(bounds: tuple[int, ...]) -> int:
        edges = (0, *bounds, n)
        return sum((b - a) * (per_row + ordered[b - 1]) for a, b in zip(edges, edges[1:]))

    options = [(a,) for a in cuts]
    if most >= 3:
        options += [(a, b) for a in cuts for b in cuts if b - a >= smallest]
    whole = cost(())
    best = min(options, key=cost, default=())
    if not best or cost(best) > (1 - BUCKET_SAVING) * whole:
        return None
    if model is not None and not saves_enough(model, whole - cost(best)):
        return None
    edges = (0, *best, n)
    return [order[a:b] for a, b in zip(edges, edges[1:])]


def full_response_logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, prompt_length: int) -> Tensor:
    """Logits that predict the ``R`` response tokens, ``[N, R, V]``, from one forward over every column (only
    the response positions' logits are materialised when the model takes ``logits_to_keep``)."""
    response_width = input_ids.shape[1] - prompt_length
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask,
                  position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    try:
        logits = model(**kwargs, logits_to_keep=response_width + 1).logits
    except TypeError:  # models without ``logits_to_keep``
        logits = model(**kwargs).logits
    return logits[:, -(response_width + 1):-1]


def _plain_cache_layers(cache) -> bool:
    """Whether every layer of ``cache`` is a plain growing key/value list (so that it can be rebuilt per group)."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer and layer.is_initialized for layer in layers)


def _cache_rows(prompt_cache, rows: Tensor):
    """A new cache holding ``rows`` of ``prompt_cache``'s keys and values (differentiable indexing)."""
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache()
    for index, layer in enumerate(prompt_cache.layers):
        cache.update(layer.keys[rows], layer.values[rows], index)
    return cache


def _shared_prompt_parts(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, prompt_length: int,
                         owner: Tensor, first_rows: Tensor, bucket: bool) -> Optional[list[LogitPart]]:
    """Each distinct prompt's forward once, then the responses attending to its cache (by length group when
    that pays); ``None`` when the model returned no cache that can be repeated."""
    positions = position_ids_from_mask(attention_mask)
    P, N = prompt_length, input_ids.shape[0]
    prompt = model(input_ids=input_ids[first_rows, :P], attention_mask=attention_mask[first_rows, :P],
                   position_ids=positions[first_rows, :P], use_cache=True, logits_to_keep=1)
    cache = getattr(prompt, CACHE_ARGUMENT, None)
    if cache is None or not hasattr(cache, "batch_select_indices"):
        return None
    last = prompt.logits[:, -1:]  # [G, 1, V] predicts each prompt's first response token
    lengths = attention_mask[:, P:].sum(-1).tolist()
    groups = length_buckets(lengths, model=model) if bucket and _plain_cache_layers(cache) else None
    if groups is None:
        rows = torch.arange(N, device=input_ids.device)
        width = input_ids.shape[1] - P
        if width < 2:
            return [LogitPart(rows, width, [last[owner]])]
        cache.batch_select_indices(owner)  # [G, …] → [N, …]; differentiable, so grads reach the prompt forward
        rest = model(input_ids=input_ids[:, P:-1], attention_mask=attention_mask[:, :-1],
                     position_ids=positions[:, P:-1], use_cache=True, **{CACHE_ARGUMENT: cache}).logits
        return [LogitPart(rows, width, [last[owner], rest])]
    parts = []
    for group in groups:
        rows = torch.tensor(group, device=input_ids.device)
        width = max(1, max(lengths[i] for i in group))
        blocks = [last[owner[rows]]]
        if width > 1:
            end = P + width - 1
            rest = model(input_ids=input_ids[rows, P:end], attention_mask=attention_mask[rows, :end],
                         position_ids=positions[rows, P:end], use_cache=True,
                         **{CACHE_ARGUMENT: _cache_rows(cache, owner[rows])}).logits
            blocks.append(rest)
        parts.append(LogitPart(rows, width, blocks))
    return parts


def response_logit_parts(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, prompt_length: int,
                         share_prompts: bool = True, bucket: bool = True) -> list[LogitPart]:
    """The logits predicting the response block of a batch already cut by :func:`trim_padding`: the shared-prompt
    forward when rows repeat their prompt and the model allows it, else one forward per length group (or one
    over the whole batch)."""
    owners = prompt_owners(input_ids, attention_mask, prompt_length) if share_prompts else None
    repeated = 0 if owners is None else int(attention_mask[:, :prompt_length].sum()) - int(
        attention_mask[owners[1], :prompt_length].sum())  # prompt tokens the shared forward does not compute
    if owners is not None and saves_enough(model, repeated) and can_share_prompts(model):
        parts = _shared_prompt_parts(model, input_ids, attention_mask, prompt_length, *owners, bucket)
        if parts is not None:
            return parts
    lengths = attention_mask[:, prompt_length:].sum(-1).tolist()
    groups = (length_buckets(lengths, per_row=prompt_length, model=model)
              if bucket and not steps_with_other_ranks(model) else None)
    if groups is None:
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        return [LogitPart(rows, input_ids.shape[1] - prompt_length,
                          [full_response_logits(model, input_ids, attention_mask, prompt_length)])]
    parts = []
    for group in groups:
        rows = torch.tensor(group, device=input_ids.device)
        sub = trim_padding(input_ids[rows], attention_mask[rows], prompt_length)
        logits = full_response_logits(model, sub.input_ids, sub.attention_mask, sub.prompt_length)
        parts.append(LogitPart(rows, logits.shape[1], [logits]))
    return parts
