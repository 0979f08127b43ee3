"""Greedy / sampled generation and judge-based win rates, for measuring policies on the task."""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_lightning.rewards import RewardSource


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
    """Decoded responses (special tokens skipped) for left-padded ``prompts``."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    out: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(list(prompts[start:start + batch_size]), return_tensors="pt", padding=True,
                              add_special_tokens=False).to(model.device)
            ids = model.generate(
                **batch,
                do_sample=do_sample,
                temperature=temperature if do_sample else None,
                top_k=0 if do_sample else None,
                top_p=1.0 if do_sample else None,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            new = ids[:, batch["input_ids"].shape[1]:]
            out += [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def win_rate(judge: RewardSource, prompts: Sequence[str], responses: Sequence[str],
             baseline: Sequence[str]) -> float:
    """Share of prompts where ``responses`` score above ``baseline`` under ``judge`` (ties count ½)."""
    a = judge.score(prompts, responses)
    b = judge.score(prompts, baseline)
    return ((a > b).float() + 0.5 * (a == b).float()).mean().item()
