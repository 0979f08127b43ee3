"""Which strategies the module trains under, and the clear errors for those it would train wrongly under."""

from __future__ import annotations

import pytest
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

from rlhf_lightning.distributed import FSDP2Strategy, strategy_from_flag, strategy_problems
from rlhf_lightning.distributed.deepspeed import ZeroStrategy
from rlhf_lightning.errors import RecipeError


def test_fsdp_name_selects_fsdp2():
    resolved = strategy_from_flag("fsdp")
    assert resolved.class_path == "rlhf_lightning.distributed.strategies.FSDP2Strategy"
    assert strategy_from_flag("ddp") == "ddp" and strategy_from_flag("auto") == "auto"


@pytest.mark.parametrize("flag", ["fsdp_cpu_offload", "FSDP_full_shard"])
def test_other_fsdp_names_are_refused(flag):
    with pytest.raises(RecipeError, match="use strategy: fsdp"):
        strategy_from_flag(flag)


@pytest.mark.parametrize("strategy, precision, field, text", [
    (FSDPStrategy(), "32-true", "trainer.strategy", "FSDP1"),
    (ModelParallelStrategy(), "32-true", "trainer.strategy", "tensor-parallel"),
    (FSDP2Strategy(), "bf16-true", "trainer.precision", "use bf16-mixed"),
    (FSDP2Strategy(), "16-true", "trainer.precision", "use bf16-mixed"),
])
def test_strategies_that_would_train_wrongly(strategy, precision, field, text):
    (problem,) = strategy_problems(strategy, precision)
    assert problem.field == field and text in str(problem)


@pytest.mark.parametrize("strategy", [FSDP2Strategy(), ZeroStrategy(stage=3)])
def test_qlora_is_not_sharded(strategy):
    (problem,) = strategy_problems(strategy, "bf16-mixed", load_in_4bit=True)
    assert problem.field == "model.init_args.policy.load_in_4bit" and "use strategy: ddp" in str(problem)


def test_lightning_deepspeed_would_ignore_max_grad_norm():
    (problem,) = strategy_problems(DeepSpeedStrategy(), "32-true")
    assert problem.field == "trainer.strategy" and "deepspeed_stage_2" in str(problem)


@pytest.mark.parametrize("flag, stage", [("deepspeed_stage_2", 2), ("deepspeed_stage_3", 3)])
def test_deepspeed_names_select_zero_strategy(flag, stage):
    resolved = strategy_from_flag(flag)
    assert resolved.class_path == "rlhf_lightning.distributed.deepspeed.ZeroStrategy"
    assert resolved.init_args.stage == stage


@pytest.mark.parametrize("flag", ["deepspeed", "deepspeed_stage_3_offload"])
def test_other_deepspeed_names_are_refused(flag):
    with pytest.raises(RecipeError, match="deepspeed_stage_2 or deepspeed_stage_3"):
        strategy_from_flag(flag)


def test_zero_stage_must_be_2_or_3():
    with pytest.raises(RecipeError, match="must be 2 or 3"):
        ZeroStrategy(stage=1)


def test_zero3_settings_reach_the_deepspeed_config():
    strategy = ZeroStrategy(stage=3, param_persistence_threshold=0)
    assert strategy.config["zero_optimization"]["stage3_param_persistence_threshold"] == 0
    assert strategy.exclude_frozen_parameters


@pytest.mark.parametrize("strategy, precision", [(FSDP2Strategy(), "32-true"), (FSDP2Strategy(), "bf16-mixed"),
                                                 (DDPStrategy(), "bf16-true")])
def test_supported_combinations(strategy, precision):
    assert strategy_problems(strategy, precision) == []
