"""Offline headline task, the harder sibling of ``summarize``: name a post's three most newsworthy nouns, most
newsworthy first. Newsworthiness is hidden (the gold judge knows it); the SFT data (interns' headlines: the
first nouns of the post) never shows it, so RL has to discover it (see :mod:`~.corpus`)."""

from rlhf_lightning.tasks.headline.build import VERSION, TaskFiles, build_task, read_split
from rlhf_lightning.tasks.headline.corpus import (HEADLINE_NOUNS, IMPORTANCE, HeadlineConfig, editor_headline,
                                                   intern_headline, oracle_headline, top_nouns)
from rlhf_lightning.tasks.headline.data import HeadlinePreferenceData, HeadlineTask
from rlhf_lightning.tasks.headline.judge import HeadlineJudge, headline_score

__all__ = ["HEADLINE_NOUNS", "IMPORTANCE", "VERSION", "HeadlineConfig", "HeadlineJudge", "HeadlinePreferenceData",
           "HeadlineTask", "TaskFiles", "build_task", "editor_headline", "headline_score", "intern_headline",
           "oracle_headline", "read_split", "top_nouns"]
