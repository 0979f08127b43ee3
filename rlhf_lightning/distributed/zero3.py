"""Gathering a DeepSpeed ZeRO-3 model's partitioned weights, one module at a time."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def is_partitioned(model: nn.Module) -> bool:
    """Whether ``model``'s weights are ZeRO-3 partitions (DeepSpeed marks each with a ``ds_id``)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def _is_lora_layer(module: nn.Module) -> bool:
    return hasattr(module, "get_delta_weight") and hasattr(module, "base_layer")


def gathered_state_dict(model: nn.Module, merge_lora: bool) -> dict[str, Tensor]:
    """Every process calls it; rank 0 gets the full weights on the CPU, the others ``{}``.

    Each module's own parameters are gathered (``deepspeed.zero.GatheredParameters``), copied to rank 0's
    CPU memory and released before the next module, so no process holds more than one module in full on
    its accelerator. With ``merge_lora``, a LoRA layer's base weight is written merged
    (``W + Σ get_delta_weight``, peft's own update) and its adapter tensors are not written.
    """
    import deepspeed

    writer = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    state: dict[str, Tensor] = {}
    lora_layers = [name for name, module in model.named_modules() if merge_lora and _is_lora_layer(module)]
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if any(name.startswith(f"{layer}.") for layer in lora_layers):
            continue  # gathered with its LoRA layer
        if name in lora_layers:
            with deepspeed.zero.GatheredParameters(list(module.parameters())):
                if writer:
                    weight = module.base_layer.weight.detach().clone()
                    for adapter in module.active_adapters:
                        weight += module.get_delta_weight(adapter).to(weight.dtype)
                    state[f"{prefix}base_layer.weight"] = weight.cpu()
                    if module.base_layer.bias is not None:
                        state[f"{prefix}base_layer.bias"] = module.base_layer.bias.detach().cpu().clone()
            continue
        own = list(module.named_parameters(recurse=False))
        with deepspeed.zero.GatheredParameters([p for _, p in own]):
            if writer:
                state.update({f"{prefix}{key}": p.detach().cpu().clone() for key, p in own})
        if writer:
            state.update({f"{prefix}{key}": b.detach().cpu().clone() for key, b in module.named_buffers(recurse=False)
                          if key not in module._non_persistent_buffers_set})
    return state
