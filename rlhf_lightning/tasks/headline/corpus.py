"""Posts, editors' and interns' headlines and the oracle headline of the headline task.

A post is drawn as in the summarisation task (content nouns among filler words, 5–7 nouns). A headline names
exactly :data:`HEADLINE_NOUNS` of the post's nouns. Every noun has a hidden *newsworthiness*
(:data:`IMPORTANCE`, fixed by :data:`IMPORTANCE_SEED`) that only the gold judge and the editors know:

* the **oracle** headline is the post's three most newsworthy nouns, most newsworthy first;
* the **editors** who wrote the reference column judge newsworthiness well but not perfectly (each noun's
  newsworthiness times a log-normal error of spread ``editor_noise``, drawn per post) and keep the post's
  order, so they never use the ordering the judge rewards;
* the **interns** whose headlines are the SFT data do not know newsworthiness at all: they pick three nouns
  with a bias towards the start of the post (noun ``i`` drawn with weight ``intern_decay**i``) and usually
  keep the post's order. What the policy must learn (which nouns matter, and in which order) is in no SFT
  example, only in the reward.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from rlhf_lightning.tasks.summarize.corpus import NOUNS, PROMPT_PREFIX, Example, post_nouns, sample_post
from rlhf_lightning.tasks.summarize.corpus import CorpusConfig as PostConfig

PROMPT_SUFFIX = "headline:"
HEADLINE_NOUNS = 3
IMPORTANCE_SEED = 20240618


def _importance(seed: int) -> dict[str, float]:
    """Hidden newsworthiness of every noun, uniform in [0.2, 2.0] (seeded, fixed for the task)."""
    rng = random.Random(seed)
    return {noun: rng.uniform(0.2, 2.0) for noun in NOUNS}


IMPORTANCE = _importance(IMPORTANCE_SEED)


@dataclass(frozen=True)
class HeadlineConfig:
    """How posts and headlines are drawn.

    Args:
        min_nouns / max_nouns: distinct content nouns per post (more than :data:`HEADLINE_NOUNS`, so there is a
            choice to make).
        min_words / max_words: post length in words.
        intern_decay: an intern picks the post's ``i``-th noun with weight ``intern_decay**i`` (without
            replacement); small values mean "the first three nouns".
        p_intern_shuffle: chance an intern writes the chosen nouns in a random order instead of the post's.
        editor_noise: spread (σ of the log) of the editors' error in judging newsworthiness; 0 = the editors
            pick the three most newsworthy nouns.
    """

    min_nouns: int = 5
    max_nouns: int = 7
    min_words: int = 12
    max_words: int = 18
    intern_decay: float = 0.8
    p_intern_shuffle: float = 0.35
    editor_noise: float = 1.3

    def posts(self) -> PostConfig:
        return PostConfig(min_nouns=self.min_nouns, max_nouns=self.max_nouns, min_words=self.min_words,
                          max_words=self.max_words)


def make_prompt(words: list[str]) -> str:
    """``"post: w1 w2 ... headline:"``."""
    return " ".join([PROMPT_PREFIX, *words, PROMPT_SUFFIX])


def top_nouns(prompt: str) -> list[str]:
    """The post's :data:`HEADLINE_NOUNS` most newsworthy nouns, most newsworthy first."""
    return sorted(post_nouns(prompt), key=IMPORTANCE.__getitem__, reverse=True)[:HEADLINE_NOUNS]


def oracle_headline(prompt: str) -> str:
    """The best headline under the gold judge: the three most newsworthy nouns, most newsworthy first."""
    return " ".join(top_nouns(prompt))


def editor_headline(prompt: str, seed: int = 0, noise: float = HeadlineConfig.editor_noise) -> str:
    """The reference headline: the three nouns the editors judge most newsworthy (newsworthiness times
    ``exp(N(0, noise²))``, drawn per post from ``seed`` and the post), in the post's order."""
    rng = random.Random(f"editor:{seed}:{prompt}")
    nouns = post_nouns(prompt)
    judged = {noun: IMPORTANCE[noun] * math.exp(rng.gauss(0.0, noise)) for noun in nouns}
    chosen = set(sorted(nouns, key=judged.__getitem__, reverse=True)[:HEADLINE_NOUNS])
    return " ".join(noun for noun in nouns if noun in chosen)


def intern_headline(prompt: str, rng: random.Random, config: HeadlineConfig) -> str:
    """An SFT headline: three nouns drawn with a bias to the start of the post, usually in the post's order."""
    nouns = post_nouns(prompt)
    weights = [config.intern_decay ** i for i in range(len(nouns))]
    picked: list[int] = []
    while len(picked) < min(HEADLINE_NOUNS, len(nouns)):
        index = rng.choices(range(len(nouns)), weights=weights)[0]
        weights[index] = 0.0
        picked.append(index)
    picked.sort()
    if rng.random() < config.p_intern_shuffle:
        rng.shuffle(picked)
    return " ".join(nouns[i] for i in picked)


def make_splits(sizes: dict[str, int], seed: int, config: HeadlineConfig = HeadlineConfig()
                ) -> dict[str, list[Example]]:
    """Disjoint splits of distinct posts (e.g. ``{"train": 32768, "validation": 128, "test": 256}``) with the
    editors' headlines as references; deterministic in ``seed``."""
    rng = random.Random(seed)
    seen: set[str] = set()
    posts = config.posts()
    splits: dict[str, list[Example]] = {}
    for name, size in sizes.items():
        examples: list[Example] = []
        while len(examples) < size:
            prompt = make_prompt(sample_post(rng, posts))
            if prompt not in seen:
                seen.add(prompt)
                examples.append(Example(prompt, editor_headline(prompt, seed, config.editor_noise)))
        splits[name] = examples
    return splits


def intern_examples(examples: list[Example], seed: int, config: HeadlineConfig = HeadlineConfig()) -> list[Example]:
    """The SFT data: each example's prompt with an intern's headline (deterministic in ``seed``)."""
    rng = random.Random(seed + 1)
    return [Example(ex.prompt, intern_headline(ex.prompt, rng, config)) for ex in examples]
