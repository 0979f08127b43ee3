"""The Lightning strategies the library trains with, and the recipe names that select them.

* ``strategy: fsdp`` → :class:`FSDP2Strategy`: Lightning's ``ModelParallelStrategy`` with every process in
  one data-parallel group, and the module's own FSDP2 sharding (``RLHFModule.configure_model`` shards the
  policy, the reference and the critic). Chosen over Lightning's ``FSDPStrategy`` (FSDP1) because FSDP2
  shards each parameter separately, so frozen and trainable weights (LoRA, the frozen reference) mix in
  one unit without flattening tricks, gradient clipping and checkpoints work on plain ``DTensor`` shards,
  and it runs on a CPU with gloo (the tests), which FSDP1 refuses. ``FSDPStrategy`` is refused with a
  message naming this one, as is a plain ``ModelParallelStrategy`` (its default mesh would shard over a
  tensor-parallel group the data is not split over).
* ``strategy: deepspeed_stage_2`` / ``deepspeed_stage_3`` → :class:`~rlhf_lightning.distributed.deepspeed.ZeroStrategy`
  (Lightning's ``DeepSpeedStrategy`` with ``max_grad_norm`` passed to DeepSpeed's clipping); Lightning's own
  ``DeepSpeedStrategy`` named by class path is refused, since it would ignore ``max_grad_norm``.
* ``strategy: ddp`` and the rest: Lightning's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.fabric.strategies.model_parallel import _is_sharded_checkpoint
from lightning.fabric.utilities.load import _METADATA_FILENAME
from jsonargparse import Namespace
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy, Strategy

from rlhf_lightning.distributed.checkpoints import save_through_partial
from rlhf_lightning.distributed.deepspeed import ZeroStrategy
from rlhf_lightning.distributed.fsdp import sharded_checkpoint_state
from rlhf_lightning.errors import RecipeError
from rlhf_lightning.imports import import_object

FIELD = "trainer.strategy"
ZERO_NAMES = {"deepspeed_stage_2": 2, "deepspeed_stage_3": 3}


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 over all processes (``data_parallel_size`` = world size, no tensor parallelism).

    Checkpoints are distributed (a folder of per-rank shards written by ``torch.distributed.checkpoint``),
    written to ``<name>.partial`` and renamed into place once every rank has finished, so a crash never
    leaves a half-written checkpoint under the final name. Weights that loading the model gives back
    (the frozen reference, a LoRA model's frozen base) are left out, and a resume loads what was saved.

    Args:
        save_distributed_checkpoint: per-rank shards (``True``) or one full file assembled on rank 0.
        process_group_backend: ``nccl`` on GPUs, ``gloo`` on CPUs by default.
        timeout: collective timeout.
    """

    def __init__(self, save_distributed_checkpoint: bool = True, process_group_backend: Optional[str] = None,
                 timeout=default_pg_timeout) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend, timeout=timeout)

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    @property
    def shard_mesh(self):
        """The 1-D mesh the module shards its models over."""
        return self.device_mesh["data_parallel"]

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Optional[Any] = None) -> None:
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        save_through_partial(self, filepath, lambda partial: super(FSDP2Strategy, self).save_checkpoint(
            checkpoint, partial, storage_options))

    def load_checkpoint(self, checkpoint_path, weights_only: Optional[bool] = None) -> dict[str, Any]:
        path = Path(self.broadcast(str(checkpoint_path)))
        if not _is_sharded_checkpoint(path):
            return super().load_checkpoint(path, weights_only=weights_only)
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                             set_model_state_dict, set_optimizer_state_dict)

        module = self.lightning_module
        skip = module.reloaded_from_path() if hasattr(module, "reloaded_from_path") else set()
        state = {"state_dict": sharded_checkpoint_state(self.model, skip)}
        dcp.load(state, checkpoint_id=path)
        set_model_state_dict(self.model, state["state_dict"], options=StateDictOptions(strict=False))
        for index, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{index}"
            optimizer_state = {key: get_optimizer_state_dict(self.model, optimizer)}
            dcp.load(optimizer_state, checkpoint_id=path)
            set_optimizer_state_dict(self.model, optimizer, optim_state_dict=optimizer_state[key])
        return torch.load(path / _METADATA_FILENAME, weights_only=weights_only)


def strategy_from_flag(flag: Union[str, Strategy, Any]) -> Union[str, Strategy, Any]:
    """The recipe's ``trainer.strategy`` with the library's names resolved: ``fsdp`` → :class:`FSDP2Strategy`
    (as a ``class_path`` entry, so that the saved ``config.yaml`` names it).

    Other FSDP names (``fsdp_cpu_offload``, ...) are refused with the supported ones; everything else is
    returned unchanged for Lightning to resolve.
    """
    class_path = flag.get("class_path") if hasattr(flag, "get") else None
    if not isinstance(flag, str):
        _refuse_class(class_path)
        return flag
    name = flag.strip().lower()
    if name == "fsdp":
        return Namespace(class_path=f"{FSDP2Strategy.__module__}.{FSDP2Strategy.__name__}", init_args=Namespace())
    if name in ZERO_NAMES:
        return Namespace(class_path="rlhf_lightning.distributed.deepspeed.ZeroStrategy",
                         init_args=Namespace(stage=ZERO_NAMES[name]))
    if name.startswith(("fsdp", "deepspeed")):
        raise RecipeError(FIELD, f"'{flag}' is not a sharded strategy of this library",
                          "use strategy: fsdp (FSDP2 over all processes), deepspeed_stage_2 or deepspeed_stage_3")
    if "." in name:  # a class path given as a plain string (Lightning takes only registered names there)
        _refuse_class(flag.strip())
        return Namespace(class_path=flag.strip(), init_args=Namespace())
    return flag


def _refuse_class(class_path: Optional[str]) -> None:
    """Raise :func:`strategy_class_problem`'s error for the class at ``class_path`` (Lightning would otherwise
    build it, and some refuse the machine before the module can say why the class is not supported)."""
    if not class_path:
        return
    cls = import_object(str(class_path), f"{FIELD}.class_path")
    if isinstance(cls, type):
        refused = strategy_class_problem(cls)
        if refused is not None:
            raise refused


def strategy_class_problem(cls: type) -> Optional[RecipeError]:
    """The error for a strategy class the module cannot train under correctly (``None``: fine)."""
    if issubclass(cls, FSDPStrategy):
        return RecipeError(FIELD, "Lightning's FSDPStrategy (FSDP1) is not supported: the module shards its "
                                  "models itself with FSDP2",
                           "use strategy: fsdp (rlhf_lightning.distributed.FSDP2Strategy)")
    if issubclass(cls, ModelParallelStrategy) and not issubclass(cls, FSDP2Strategy):
        return RecipeError(FIELD, "a plain ModelParallelStrategy shards over a tensor-parallel group the "
                                  "data is not split over, and tensor parallelism is not supported",
                           "use strategy: fsdp (rlhf_lightning.distributed.FSDP2Strategy)")
    if issubclass(cls, DeepSpeedStrategy) and not issubclass(cls, ZeroStrategy):
        return RecipeError(FIELD, "Lightning's DeepSpeedStrategy clips nothing under manual optimisation, "
                                  "so model.init_args.max_grad_norm would be ignored",
                           "use strategy: deepspeed_stage_2 or deepspeed_stage_3 "
                           "(rlhf_lightning.distributed.deepspeed.ZeroStrategy)")
    return None


def strategy_problems(strategy: Strategy, precision: str, load_in_4bit: bool = False) -> list[RecipeError]:
    """What the module cannot train under ``strategy`` at ``precision`` (``load_in_4bit``: a QLoRA policy)
    correctly: one error per problem."""
    problems = []
    if load_in_4bit and isinstance(strategy, (FSDP2Strategy, ZeroStrategy)):
        problems.append(RecipeError("model.init_args.policy.load_in_4bit", "4-bit (QLoRA) weights are not sharded by "
                                    "FSDP2 or DeepSpeed in this library",
                                    "use strategy: ddp (every GPU holds the 4-bit base, a quarter of bf16's size)"))
    refused = strategy_class_problem(type(strategy))
    if refused is not None:
        problems.append(refused)
    elif isinstance(strategy, FSDP2Strategy) and precision in ("bf16-true", "16-true"):
        problems.append(RecipeError("trainer.precision", f"{precision} would cast the sharded fp32 master weights to "
                                                         "half precision, so small updates round away",
                                    "use bf16-mixed (fp32 shards, bf16 compute); dtype: bfloat16 loads in bf16"))
    return problems
