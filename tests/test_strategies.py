"""Which strategies the module trains under, and the clear errors for those it would train wrongly under."""

from __future__ import annotations

import pytest
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy

from rlhf_lightning.distributed import FSDP2Strategy, strategy_from_flag, strategy_problems
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


@pytest.mark.parametrize("strategy, precision", [(FSDP2Strategy(), "32-true"), (FSDP2Strategy(), "bf16-mixed"),
                                                 (DDPStrategy(), "bf16-true")])
def test_supported_combinations(strategy, precision):
    assert strategy_problems(strategy, precision) == []
