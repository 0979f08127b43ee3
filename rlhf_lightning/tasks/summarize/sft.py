"""The tiny Llama policy of the task and its supervised warm start on the human references."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import Tensor
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rlhf_lightning.tasks.summarize.corpus import Example


@dataclass(frozen=True)
class SFTConfig:
    """Model size and supervised fine-tuning settings.

    Args:
        hidden_size / num_layers / num_heads / intermediate_size: Llama dimensions.
        context: ``max_position_embeddings`` and the tokenizer's ``model_max_length``.
        steps: optimiser steps (batches of ``batch_size`` examples, reshuffled every epoch).
        lr: peak AdamW learning rate (linear warm-up over 5% of steps, then cosine decay to 10%).
        weight_decay: AdamW weight decay.
    """

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    context: int = 64
    steps: int = 600
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01

    def to_dict(self) -> dict:
        return asdict(self)


def make_model(tokenizer: PreTrainedTokenizerFast, config: SFTConfig) -> LlamaForCausalLM:
    """A freshly initialised tiny ``LlamaForCausalLM`` (tied embeddings) for ``tokenizer``."""
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.context,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(llama)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model


def encode_examples(examples: Sequence[Example], tokenizer: PreTrainedTokenizerFast) -> list[tuple[list[int], list[int]]]:
    """Token ids of each example: ``(prompt, reference + EOS)``."""
    prompts = tokenizer([ex.prompt for ex in examples], add_special_tokens=False).input_ids
    responses = tokenizer([ex.reference for ex in examples], add_special_tokens=False).input_ids
    return [(p, r + [tokenizer.eos_token_id]) for p, r in zip(prompts, responses)]


def collate(pairs: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Tensor]:
    """Right-padded ``prompt + response`` with labels on the response tokens only."""
    width = max(len(p) + len(r) for p, r in pairs)
    ids, mask, labels = [], [], []
    for prompt, response in pairs:
        fill = width - len(prompt) - len(response)
        ids.append(prompt + response + [pad_id] * fill)
        mask.append([1] * (len(prompt) + len(response)) + [0] * fill)
        labels.append([-100] * len(prompt) + response + [-100] * fill)
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}


def _lr_factor(step: int, total: int) -> float:
    warmup = max(1, total // 20)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_sft(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    examples: Sequence[Example],
    config: SFTConfig,
    seed: int,
    progress: bool = True,
) -> list[float]:
    """Fine-tune ``model`` in place on ``examples``; returns the per-step training losses."""
    from rlhf_lightning.progress import progress_bar

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config.steps))
    encoded = encode_examples(examples, tokenizer)
    order: list[int] = []
    losses: list[float] = []
    model.train()
    bar = progress_bar(range(config.steps), desc="SFT warm start", unit="steps", disable=not progress)
    for _ in bar:
        if len(order) < config.batch_size:
            order += torch.randperm(len(examples), generator=generator).tolist()
        batch_ids, order = order[:config.batch_size], order[config.batch_size:]
        batch = collate([encoded[i] for i in batch_ids], tokenizer.pad_token_id)
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    return losses
