"""Offline TL;DR-style summarisation task: synthetic posts, flawed human references, a gold judge
and a tiny SFT-warm-started Llama policy (see :func:`build_task`)."""

from rlhf_lightning.tasks.summarize.build import VERSION, TaskFiles, build_task, read_split
from rlhf_lightning.tasks.summarize.data import (SummarizePreferenceData, SummarizeSFTData, SummarizeTask,
                                                  SummarizeUnpairedData)
from rlhf_lightning.tasks.summarize.corpus import oracle_summary, post_nouns
from rlhf_lightning.tasks.summarize.evaluate import generate_responses
from rlhf_lightning.tasks.summarize.judge import GoldJudge, GoldPreference, gold_score

__all__ = [
    "VERSION",
    "GoldJudge",
    "GoldPreference",
    "SummarizePreferenceData",
    "SummarizeSFTData",
    "SummarizeTask",
    "SummarizeUnpairedData",
    "TaskFiles",
    "build_task",
    "generate_responses",
    "gold_score",
    "oracle_summary",
    "post_nouns",
    "read_split",
]
