"""Export of a sharded policy (FSDP2 or ZeRO-3): full weights gathered to rank 0, written as one Hugging Face
directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from rlhf_lightning.distributed.fsdp import cast_floating, full_state_dict
from rlhf_lightning.distributed.zero3 import gathered_state_dict as zero3_state_dict, is_partitioned
from rlhf_lightning.models import absolute_adapter_base, merged_base_state


def gathered_state_dict(model: nn.Module, merge_lora: bool) -> dict[str, torch.Tensor]:
    """Every process calls it; rank 0 gets ``model``'s full weights on the CPU (a LoRA model's merged when
    ``merge_lora``), the others ``{}``: FSDP2 shards are merged in place, gathered and unmerged; ZeRO-3
    partitions are gathered module by module."""
    lora = hasattr(model, "peft_config")
    if is_partitioned(model):
        return zero3_state_dict(model, merge_lora=lora and merge_lora)
    if lora and merge_lora:
        model.merge_adapter()  # on each rank's shards
    try:
        return full_state_dict(model)
    finally:
        if lora and merge_lora:
            model.unmerge_adapter()


def save_sharded_hf_directory(model: nn.Module, tokenizer, directory: str | os.PathLike, merge_lora: bool,
                              dtype: Optional[torch.dtype], writer: bool) -> Optional[Path]:
    """Every process calls it; the ``writer`` (rank 0) saves ``model``'s full weights with ``save_pretrained``.

    The weights are gathered by :func:`gathered_state_dict` into rank 0's CPU memory (one full copy, never
    two) and cast to ``dtype`` (the dtype they were loaded in). A LoRA model is written merged when
    ``merge_lora``, otherwise as its adapter alone.
    """
    directory = Path(directory)
    lora = hasattr(model, "peft_config")
    state = gathered_state_dict(model, merge_lora)
    if not writer:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    if lora and not merge_lora:
        absolute_adapter_base(model)
        model.save_pretrained(directory, state_dict=state, safe_serialization=True)  # peft keeps the adapter's keys
    else:
        base = model.get_base_model() if lora else model
        state = cast_floating(merged_base_state(state) if lora else state, dtype)
        base.save_pretrained(directory, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory
