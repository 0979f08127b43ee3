"""One training run that records, per rank, the bytes of every tensor the trainer keeps between steps.

Used by ``benchmarks/memory.py --measure`` (Lightning starts the other ranks by running this script again)::

    python benchmarks/memory_probe.py OUT CLI-ARGS...

Each rank writes ``OUT/rank<r>.json``: the bytes of the unique tensor storages reachable from the module's
models and the optimizers (weights, their shards or partitions, optimizer state, master copies, DeepSpeed's
flat buffers), measured after the first rollout batch's updates, when no activations are alive.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback
from torch import nn

KEEP_WALKING = ("torch", "deepspeed", "rlhf_lightning", "lightning")


def _storage(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def resident_bytes(*roots) -> int:
    """Bytes of the unique storages of all tensors reachable from ``roots`` (modules, optimizers, containers)."""
    seen_storages: set[int] = set()
    visited: set[int] = set()
    total = 0
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in visited:
            continue
        visited.add(id(obj))
        if isinstance(obj, torch.Tensor):
            for tensor in (_storage(obj), getattr(obj, "ds_tensor", None), obj.grad):
                if tensor is None:
                    continue
                storage = _storage(tensor).untyped_storage()
                if storage.data_ptr() and storage.data_ptr() not in seen_storages:
                    seen_storages.add(storage.data_ptr())
                    total += storage.nbytes()
        elif isinstance(obj, nn.Module):
            stack.extend(obj.parameters())
            stack.extend(obj.buffers())
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set)):
            stack.extend(obj)
        elif type(obj).__module__.split(".")[0] in KEEP_WALKING and hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
    return total


class MeasureStates(Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx != 0:
            return
        models = [m for m in (pl_module.policy, pl_module.reference, pl_module.critic) if m is not None]
        optimizers = [getattr(o, "_optimizer", o) for o in trainer.optimizers]
        engine = getattr(trainer.strategy, "deepspeed_engine", None) if hasattr(trainer.strategy, "zero_stage_3") else None
        if engine is not None:
            optimizers.append(engine.optimizer)
        record = {"bytes": resident_bytes(*models, *optimizers), "strategy": type(trainer.strategy).__name__,
                  "world_size": trainer.world_size}
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def main() -> None:
    from rlhf_lightning.cli import RLHFCLI

    out, args = Path(sys.argv[1]), sys.argv[2:]
    cli = RLHFCLI(args=args, run=False)
    cli.trainer.callbacks.insert(0, MeasureStates(out))
    cli.trainer.fit(cli.model, cli.datamodule)


if __name__ == "__main__":
    main()
