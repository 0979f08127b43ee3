"""Offline verifiable-reward task: two-digit additions ``"57+68="`` with an exact ``answer`` column, a 0/1
reward that checks it, and a tiny Llama SFT'd on sloppy answers (carries often forgotten) as the warm start."""

from rlhf_lightning.tasks.arithmetic.build import VERSION, TaskFiles, build_task, read_split
from rlhf_lightning.tasks.arithmetic.data import ArithmeticTask
from rlhf_lightning.tasks.arithmetic.problems import ProblemConfig, carry_free_sum, has_carry, make_splits
from rlhf_lightning.tasks.arithmetic.reward import exact_answer, parse_answer

__all__ = ["VERSION", "ArithmeticTask", "ProblemConfig", "TaskFiles", "build_task", "carry_free_sum",
           "exact_answer", "has_carry", "make_splits", "parse_answer", "read_split"]
