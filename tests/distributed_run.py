"""Run the CLI under a multi-process strategy and record what each rank ends with.

Usage: ``python tests/distributed_run.py OUT CRASH_AT CKPT CLI-ARGS...`` (``CRASH_AT`` -1 for none, ``CKPT``
``-`` to start afresh, else the checkpoint to resume from). Lightning
starts the other ranks by running this script again. Each rank writes ``OUT/rank<r>.json``: the logged
``loss/*`` values of every step (averaged over ranks, as logged) and a digest of the full policy weights it
can see (gathered from the shards under FSDP); rank 0 also writes the full weights to
``OUT/weights.safetensors``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from lightning.pytorch import Callback  # noqa: E402

from rlhf_lightning.cli import RLHFCLI  # noqa: E402
from rlhf_lightning.distributed import is_sharded  # noqa: E402
from rlhf_lightning.distributed.zero3 import is_partitioned  # noqa: E402


def full_weights(model) -> dict[str, torch.Tensor]:
    """The full weights on every rank (all-gathered shards under FSDP, gathered partitions under ZeRO-3)."""
    if is_partitioned(model):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            return {key: value.detach().float().cpu().clone() for key, value in model.state_dict().items()}
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))
    else:
        state = model.state_dict()
    return {key: value.detach().float().cpu().clone() for key, value in state.items()}


class RecordRun(Callback):
    def __init__(self, out: Path, crash_at: int) -> None:
        self.out, self.crash_at, self.losses = out, crash_at, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.crash_at:
            raise RuntimeError("simulated crash")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("loss/")})

    def on_train_end(self, trainer, pl_module):
        weights = full_weights(pl_module.policy)
        digest = {key: [float(value.sum()), float(value.abs().sum())] for key, value in sorted(weights.items())}
        record = {"losses": self.losses, "digest": digest, "sharded": is_sharded(pl_module.policy),
                  "zero_partitioned": any(hasattr(p, "ds_id") for p in pl_module.policy.parameters()),
                  "others_sharded": [is_sharded(m) or is_partitioned(m) for m in (pl_module.reference, pl_module.critic)
                                     if m is not None],
                  "local_numel": sum(p.numel() for p in pl_module.policy.parameters()),
                  "world_size": trainer.world_size, "global_step": trainer.global_step,
                  "strategy": type(trainer.strategy).__name__}
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
        if trainer.is_global_zero:
            from safetensors.torch import save_file

            save_file(weights, str(self.out / "weights.safetensors"))


def main() -> None:
    out, crash_at, ckpt, args = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    cli = RLHFCLI(args=args[1:] if args and args[0] == "fit" else args, run=False)
    cli.trainer.callbacks.insert(0, RecordRun(out, crash_at))  # before the export (which merges LoRA on rank 0)
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=None if ckpt == "-" else ckpt)


if __name__ == "__main__":
    main()
