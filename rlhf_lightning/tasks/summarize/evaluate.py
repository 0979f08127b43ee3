"""Greedy / sampled generation of a policy on the task, through the library's generation engine."""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_lightning.generation import HFGenerator, SamplingParams


@torch.no_grad()
def generate_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    max_new_tokens: int = 12,
    batch_size: int = 128,
) -> list[str]:
    """Decoded responses (special tokens skipped) for left-padded ``prompts``, through the library's
    generation engine (the same sampling as rollouts)."""
    engine = HFGenerator()
    engine.setup(tokenizer, model)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature if do_sample else 0.0)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(list(prompts[start:start + batch_size]), return_tensors="pt", padding=True,
                              add_special_tokens=False).to(model.device)
            generation = engine.generate(model, batch["input_ids"], batch["attention_mask"], params)
            out += [text.strip() for text in tokenizer.batch_decode(generation.responses, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return out

