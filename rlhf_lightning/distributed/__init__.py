"""Multi-process training: the strategies the recipes name, and the FSDP2 sharding of the module's models."""

from rlhf_lightning.distributed.fsdp import is_sharded, shard, steps_with_other_ranks
from rlhf_lightning.distributed.strategies import FSDP2Strategy, strategy_from_flag, strategy_problems

__all__ = ["FSDP2Strategy", "is_sharded", "shard", "steps_with_other_ranks", "strategy_from_flag",
           "strategy_problems"]
