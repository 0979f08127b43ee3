"""Token encoding shared by data modules and reward models: prompts (text or chat messages),
responses (EOS appended) and the prompt + response block layout."""

from __future__ import annotations

from typing import Any, Sequence, Union

import torch
from torch import Tensor

Messages = list[dict[str, Any]]


def encode_prompt(tokenizer, prompt: Union[str, Messages]) -> list[int]:
    """Prompt tokens: plain text with the tokenizer's special tokens, or chat messages through the
    tokenizer's chat template (with the generation prompt of the assistant turn)."""
    if isinstance(prompt, str):
        return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the prompt is a list of chat messages, but the tokenizer has no chat template")
    ids = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def response_text(response: Union[str, dict, Messages]) -> str:
    """The text of a response given as a string, a message ``{"role", "content"}`` or a list ending in one."""
    if isinstance(response, str):
        return response
    if isinstance(response, dict):
        return str(response.get("content", ""))
    if isinstance(response, list) and response:
        return response_text(response[-1])
    return ""


def encode_response(tokenizer, response: Union[str, dict, Messages]) -> list[int]:
    """Response tokens with EOS appended (what the policy must learn to end with)."""
    return list(tokenizer(response_text(response), add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]


def pad_prompt_response(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                        pad_token_id: int) -> tuple[Tensor, Tensor, int]:
    """``input_ids``/``attention_mask`` ``[N, P + R]``: prompts left-padded to ``P``, responses right-padded to ``R``."""
    width_p = max(len(p) for p in prompts)
    width_r = max(1, max(len(r) for r in responses))
    n = len(prompts)
    input_ids = torch.full((n, width_p + width_r), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width_p + width_r), dtype=torch.long)
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        input_ids[i, width_p - len(prompt):width_p] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[i, width_p - len(prompt):width_p] = 1
        input_ids[i, width_p:width_p + len(response)] = torch.tensor(response, dtype=torch.long)
        attention_mask[i, width_p:width_p + len(response)] = 1
    return input_ids, attention_mask, width_p
