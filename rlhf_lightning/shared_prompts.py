"""Forward passes over prompt + response rows that compute no padding and each distinct prompt once.

Rows come as ``[N, P + R]``: a left-padded prompt block of width ``P`` and a right-padded response block
of width ``R`` (see :mod:`rlhf_lightning.logprobs`). Two kinds of work in such a batch are waste:

* **padding columns**: prompt columns where every row is still padding and response columns after the
  longest response. They are cut off (:func:`trim_padding`); positions come from the attention mask, so
  the numbers do not change.
* **repeated prompts**: the ``k`` samples of a prompt (and the chosen/rejected rows of a preference pair)
  share their prompt block. :func:`shared_prompt_logits` runs the model over each distinct prompt once,
  keeps its KV cache, repeats the cache for the prompt's rows and then runs only the response tokens,
  attending to that cache. With grad on, the gradient flows through the repeated cache into the
  prompt's forward, so the update is the one of the full forward: only the repeated prompt work is gone.
  A step with ``k`` samples of prompts ``P`` tokens long and responses ``R`` tokens long computes
  ``P + k·R`` tokens per prompt instead of ``k·(P + R)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from rlhf_lightning.distributed.fsdp import steps_with_other_ranks
from rlhf_lightning.generation.eos import base_model
from rlhf_lightning.generation.kv_cache import CACHE_ARGUMENT


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
    """Whether :func:`shared_prompt_logits` may run on ``model``: a Hugging Face model with a repeatable KV
    cache, no gradient checkpointing (which turns the cache off in training) and weights not sharded over
    processes (where every rank must run the same forwards, whatever its rows)."""
    inner = base_model(model)
    checkpointed = getattr(inner, "is_activation_checkpointing" if hasattr(type(inner), "is_activation_checkpointing")
                           else "is_gradient_checkpointing", False)
    return (hasattr(inner, "generation_config") and not checkpointed
            and getattr(getattr(inner, "config", None), "is_encoder_decoder", False) is False
            and not steps_with_other_ranks(model))


def shared_prompt_logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, positions: Tensor,
                         prompt_length: int, owner: Tensor, first_rows: Tensor) -> Optional[tuple[Tensor, Tensor]]:
    """Logits that predict the response block, with each distinct prompt's forward run once.

    Returns ``(first [N, 1, V], rest [N, R − 1, V])``: ``first`` predicts response token 0 (the last prompt
    position's logits of the row's prompt), ``rest`` predicts tokens ``1 … R − 1`` from the response forward
    over tokens ``0 … R − 2`` attending to the prompt's cache. ``None`` when the model returned no cache that
    can be repeated (the caller then runs the full forward)."""
    prompt = model(input_ids=input_ids[first_rows, :prompt_length],
                   attention_mask=attention_mask[first_rows, :prompt_length],
                   position_ids=positions[first_rows, :prompt_length], use_cache=True, logits_to_keep=1)
    cache = getattr(prompt, CACHE_ARGUMENT, None)
    if cache is None or not hasattr(cache, "batch_select_indices"):
        return None
    first = prompt.logits[:, -1:][owner]
    if input_ids.shape[1] - prompt_length < 2:
        return first, first[:, :0]
    cache.batch_select_indices(owner)  # [G, …] → [N, …]; differentiable indexing, so grads reach the prompt forward
    rest = model(input_ids=input_ids[:, prompt_length:-1], attention_mask=attention_mask[:, :-1],
                 position_ids=positions[:, prompt_length:-1], use_cache=True, **{CACHE_ARGUMENT: cache}).logits
    return first, rest
