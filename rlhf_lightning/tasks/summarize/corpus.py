"""Words, posts, "human" reference summaries and oracle summaries of the summarisation task.

A post is a short sequence of words mixing a few distinct *content nouns* (what a summary must
mention) with *filler* words. The ideal summary lists the post's nouns in order of appearance.
The simulated humans who wrote the references have systematic habits that the gold judge
penalises, so that a model fine-tuned on them inherits the flaws in its most likely output:
they usually drop the last noun and often open with a verbal tic.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

NOUNS: tuple[str, ...] = (
    "apple", "anchor", "badge", "banana", "barrel", "basket", "blanket", "bottle", "bridge",
    "bucket", "camera", "candle", "carpet", "castle", "cherry", "clock", "compass", "dragon",
    "engine", "feather", "forest", "garden", "guitar", "hammer", "helmet", "island", "jacket",
    "kettle", "ladder", "lantern", "letter", "magnet", "mirror", "needle", "orange", "parrot",
    "pencil", "pillow", "planet", "pocket", "rabbit", "rocket", "saddle", "tiger", "tunnel",
    "violin", "wagon", "window",
)
"""Content nouns: a good summary mentions every one that the post contains."""

TIC = "basically"
"""The verbal tic the simulated humans like to open a summary with."""

FILLERS: tuple[str, ...] = (
    TIC, "the", "a", "and", "then", "so", "very", "really", "just", "quite", "some", "many",
    "was", "were", "is", "had", "got", "went", "saw", "found", "near", "under", "over", "into",
    "with", "about", "after", "before", "today", "yesterday", "again", "still", "maybe", "always",
    "never", "also",
)
"""Filler words: they pad posts and cost a summary points."""

PROMPT_PREFIX = "post:"
PROMPT_SUFFIX = "summary:"


@dataclass(frozen=True)
class CorpusConfig:
    """How posts and references are drawn.

    Args:
        min_nouns / max_nouns: distinct content nouns per post.
        min_words / max_words: post length in words.
        p_drop_last: chance a human leaves out the last-mentioned (least salient) noun.
        p_tic: chance a human opens the summary with the tic word.
        p_extra_filler: chance a human slips one random filler word in somewhere.
    """

    min_nouns: int = 3
    max_nouns: int = 5
    min_words: int = 10
    max_words: int = 16
    p_drop_last: float = 0.7
    p_tic: float = 0.7
    p_extra_filler: float = 0.1


@dataclass(frozen=True)
class Example:
    """One task example: the prompt text and its human reference summary."""

    prompt: str
    reference: str


def make_prompt(words: list[str]) -> str:
    """``"post: w1 w2 ... summary:"``."""
    return " ".join([PROMPT_PREFIX, *words, PROMPT_SUFFIX])


_PUNCT = re.compile(r"^[^\w<>]+|[^\w<>]+$")


def tokens(text: str) -> list[str]:
    """Lower-cased whitespace tokens with surrounding punctuation stripped; empty ones dropped."""
    out = []
    for raw in text.lower().split():
        word = _PUNCT.sub("", raw)
        if word:
            out.append(word)
    return out


def post_words(prompt: str) -> list[str]:
    """The post's words: the prompt's tokens without the ``post:`` / ``summary:`` markers."""
    words = tokens(prompt)
    if words and words[0] == "post":
        words = words[1:]
    if words and words[-1] == "summary":
        words = words[:-1]
    return words


def post_nouns(prompt: str) -> list[str]:
    """Distinct content nouns of a prompt (or bare post text), in order of first appearance."""
    noun_set = set(NOUNS)
    seen: list[str] = []
    for word in post_words(prompt):
        if word in noun_set and word not in seen:
            seen.append(word)
    return seen


def oracle_summary(prompt: str) -> str:
    """The best summary under the gold judge: the post's nouns in order."""
    return " ".join(post_nouns(prompt))


def sample_post(rng: random.Random, config: CorpusConfig) -> list[str]:
    """A post as a list of words: distinct nouns at random slots, filler elsewhere."""
    length = rng.randint(config.min_words, config.max_words)
    nouns = rng.sample(NOUNS, rng.randint(config.min_nouns, config.max_nouns))
    slots = sorted(rng.sample(range(length), len(nouns)))
    words = [rng.choice(FILLERS) for _ in range(length)]
    for slot, noun in zip(slots, nouns):
        words[slot] = noun
    return words


def human_summary(words: list[str], rng: random.Random, config: CorpusConfig) -> str:
    """A reference written by a simulated human, with the habits described in the module doc."""
    nouns = post_nouns(" ".join(words))
    summary = list(nouns)
    if rng.random() < config.p_drop_last:
        summary = summary[:-1]
    if rng.random() < config.p_extra_filler:
        summary.insert(rng.randint(0, len(summary)), rng.choice(FILLERS[1:]))
    if rng.random() < config.p_tic:
        summary.insert(0, TIC)
    return " ".join(summary)


def make_examples(n: int, rng: random.Random, config: CorpusConfig, exclude: set[str] | None = None) -> list[Example]:
    """``n`` examples with prompts not in ``exclude`` and not repeated (``exclude`` is updated)."""
    exclude = set() if exclude is None else exclude
    examples: list[Example] = []
    while len(examples) < n:
        words = sample_post(rng, config)
        prompt = make_prompt(words)
        if prompt in exclude:
            continue
        exclude.add(prompt)
        examples.append(Example(prompt, human_summary(words, rng, config)))
    return examples


def make_splits(sizes: dict[str, int], seed: int, config: CorpusConfig = CorpusConfig()) -> dict[str, list[Example]]:
    """Disjoint splits (e.g. ``{"train": 4096, "validation": 128, "test": 256}``), deterministic in ``seed``."""
    rng = random.Random(seed)
    seen: set[str] = set()
    return {name: make_examples(size, rng, config, seen) for name, size in sizes.items()}
