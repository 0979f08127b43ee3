"""FSDP2 sharding of the module's models (``torch.distributed.fsdp.fully_shard``) and gathering them back.

Each transformer block (the classes a Hugging Face model lists in ``_no_split_modules``) becomes one FSDP
unit, and the model itself the root unit that holds what is left (embeddings, final norm, heads; tied
weights stay together). Every process keeps ``1/N`` of each parameter as a ``DTensor`` shard; a unit's
full weights exist only while it runs (all-gathered before its forward and backward, freed after), and
gradients are reduce-scattered, so the ranks' updates are those of one model trained on all ranks' rows.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks: instances of every class named in a submodule's ``_no_split_modules``."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    return [module for module in model.modules() if type(module).__name__ in names]


def shard(model: nn.Module, mesh, called_directly: Sequence[nn.Module] = ()) -> nn.Module:
    """Shard ``model`` over the 1-D ``mesh`` in place: one FSDP unit per transformer block, one per module in
    ``called_directly``, then the root.

    A unit's weights are gathered when its own ``forward`` runs, so a submodule that the library calls by
    itself (a value model's backbone and head) must be a unit of its own. A peft model is sharded through
    its base model (the adapter layers live inside the blocks).
    """
    from torch.distributed.fsdp import fully_shard

    root = model.get_base_model() if hasattr(model, "peft_config") else model
    for block in transformer_blocks(root):
        fully_shard(block, mesh=mesh)
    for module in called_directly:
        fully_shard(module, mesh=mesh)
    fully_shard(root, mesh=mesh)
    return model


def is_sharded(model: Optional[nn.Module]) -> bool:
    """Whether ``model``'s parameters are FSDP2 ``DTensor`` shards."""
    from torch.distributed.tensor import DTensor

    return model is not None and any(isinstance(p, DTensor) for p in model.parameters())


def upcast_trainable(model: nn.Module) -> None:
    """Give a sharded, fully trained model fp32 parameters (the sharded master weights).

    bf16/fp16 weights are cast after sharding, so each process converts only its own shard; under
    ``bf16-mixed`` the forward still runs in bf16 (autocast). LoRA models keep their frozen base as loaded
    (peft creates the adapter in fp32).
    """
    if not hasattr(model, "peft_config") and any(p.dtype != torch.float32 for p in model.parameters()):
        model.float()


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Every process calls it; rank 0 gets the full (unsharded) state dict on the CPU, the others ``{}``.

    The full weights are gathered one tensor at a time into CPU memory (``cpu_offload``), so no process
    holds them twice, nor on its accelerator.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def cast_floating(state: dict[str, Tensor], dtype: Optional[torch.dtype]) -> dict[str, Tensor]:
    """``state`` with its floating-point tensors cast to ``dtype`` (unchanged for ``None``), one at a time."""
    if dtype is None:
        return state
    for key, value in state.items():
        if value.is_floating_point() and value.dtype != dtype:
            state[key] = value.to(dtype)
    return state


def sharded_checkpoint_state(module: nn.Module, skip: set[str]) -> dict[str, Any]:
    """The module's sharded state dict (``DTensor`` values) without the keys in ``skip``, for DCP."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return {key: value for key, value in get_model_state_dict(module).items() if key not in skip}


def steps_with_other_ranks(model: nn.Module) -> bool:
    """Whether a forward of ``model`` is a collective step: its weights are sharded over several processes
    (FSDP2 ``DTensor`` shards, or DeepSpeed ZeRO-3 partitions), so every rank must run each forward, and
    ``generate`` must keep stepping until the longest response of any rank has ended (``synced_gpus``)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    if torch.distributed.get_world_size() < 2:
        return False
    from rlhf_lightning.distributed.zero3 import is_partitioned

    return is_sharded(model) or is_partitioned(model)
