"""``strategy: deepspeed_stage_2`` / ``deepspeed_stage_3``: Lightning's DeepSpeedStrategy, set up for this module.

What it changes (``deepspeed`` is an optional extra: ``pip install -e .[deepspeed]``):

* the module's ``max_grad_norm`` becomes DeepSpeed's ``gradient_clipping`` (DeepSpeed clips inside its own
  step; Lightning's ``clip_gradients`` does nothing under DeepSpeed, so the setting would be ignored);
* the models load whole in each process and ``deepspeed.initialize`` partitions them (ZeRO-3), instead of
  being built under ``deepspeed.zero.Init``, which Hugging Face ``from_pretrained`` does not fill correctly
  unless a ``HfDeepSpeedConfig`` is alive;
* checkpoints leave out the frozen weights (the reference, a LoRA model's base), which load from their
  paths, and are written to ``<name>.partial`` and renamed into place;
* on a CPU (gloo) the CUDA-only checks of Lightning's ``setup_environment`` and ``setup_distributed`` are lifted, so the tests run there.
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Union

from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

from rlhf_lightning.distributed.checkpoints import save_through_partial
from rlhf_lightning.errors import RecipeError


class ZeroStrategy(DeepSpeedStrategy):
    """DeepSpeed ZeRO (``stage`` 2: optimizer state and gradients partitioned; 3: the weights too).

    Args:
        stage: the ZeRO stage, 2 or 3.
        offload_optimizer: keep the optimizer state in CPU memory.
        offload_parameters: ZeRO-3: keep the partitioned weights in CPU memory.
        param_persistence_threshold: ZeRO-3: parameters with fewer elements stay whole on every rank.
        allgather_bucket_size: elements per all-gather bucket.
        reduce_bucket_size: elements per reduce bucket.
        config: a DeepSpeed config (path or dict) for everything else; ``gradient_clipping`` is always
            ``model.init_args.max_grad_norm``.
        process_group_backend: ``nccl`` on GPUs, ``gloo`` on CPUs by default.
    """

    def __init__(self, stage: int = 2, offload_optimizer: bool = False, offload_parameters: bool = False,
                 param_persistence_threshold: int = 100_000, allgather_bucket_size: int = 200_000_000,
                 reduce_bucket_size: int = 200_000_000, config: Optional[Union[str, dict]] = None,
                 process_group_backend: Optional[str] = None) -> None:
        if stage not in (2, 3):
            raise RecipeError("trainer.strategy.init_args.stage", f"must be 2 or 3, got {stage}",
                              "use strategy: deepspeed_stage_2 or deepspeed_stage_3")
        super().__init__(stage=stage, offload_optimizer=offload_optimizer, offload_parameters=offload_parameters,
                         allgather_bucket_size=allgather_bucket_size, reduce_bucket_size=reduce_bucket_size,
                         config=config, process_group_backend=process_group_backend,
                         exclude_frozen_parameters=True)
        if stage == 3 and config is None:
            self.config["zero_optimization"]["stage3_param_persistence_threshold"] = param_persistence_threshold

    def setup_environment(self) -> None:
        if self.root_device.type == "cpu":  # Lightning refuses CPUs by this check only; DeepSpeed runs on gloo
            DDPStrategy.setup_environment(self)  # which calls setup_distributed below
        else:
            super().setup_environment()

    def setup_distributed(self) -> None:
        if self.root_device.type == "cpu":  # the same, without the check that devices have CUDA indices
            reset_seed()
            self.set_world_ranks()
            self._init_deepspeed_distributed()
        else:
            super().setup_distributed()

    @contextmanager
    def _device_rank_on_cpu(self) -> Iterator[None]:
        """Lightning passes ``deepspeed.initialize`` the device's CUDA index, which a CPU lacks: give DeepSpeed the
        local rank instead (for training and for the validate loop of ``evaluate``)."""
        if self.root_device.type != "cpu":
            yield
            return
        import deepspeed

        initialize = deepspeed.initialize

        def with_local_rank(*args, **kwargs):
            kwargs["args"] = argparse.Namespace(device_rank=self.local_rank)
            return initialize(*args, **kwargs)

        deepspeed.initialize = with_local_rank
        try:
            yield
        finally:
            deepspeed.initialize = initialize

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        with self._device_rank_on_cpu():
            return super()._setup_model_and_optimizer(model, optimizer, lr_scheduler)

    def _initialize_deepspeed_inference(self, model) -> None:
        with self._device_rank_on_cpu():
            super()._initialize_deepspeed_inference(model)

    @contextmanager
    def model_sharded_context(self) -> Iterator[None]:
        yield  # load whole; deepspeed.initialize partitions the weights

    def setup(self, trainer) -> None:
        module = self.lightning_module
        self.config["gradient_clipping"] = float(getattr(module, "max_grad_norm", None) or 0.0)
        module.strict_loading = False  # the frozen weights are not in the checkpoint: they load from their paths
        super().setup(trainer)

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options: Optional[Any] = None) -> None:
        save_through_partial(self, filepath,
                             lambda partial: super(ZeroStrategy, self).save_checkpoint(checkpoint, partial, storage_options))
