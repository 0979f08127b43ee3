"""The hidden gold judge of the headline task: a pure function of (prompt, response) text."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from rlhf_lightning.errors import RecipeError
from rlhf_lightning.rewards import RewardSource
from rlhf_lightning.tasks.headline.corpus import HEADLINE_NOUNS, IMPORTANCE, PROMPT_SUFFIX, oracle_headline, top_nouns
from rlhf_lightning.tasks.summarize.corpus import post_nouns, tokens
from rlhf_lightning.tasks.summarize.judge import SPECIAL_TOKENS

BASE = -1.0  # raw score of the empty response
SELECTION_SCALE = 2.0  # raw points for naming the post's three most newsworthy nouns
ORDER_BONUS = 0.6  # raw points when the named nouns are in decreasing newsworthiness
EXTRA_PENALTY = 0.4  # per word that is not a noun of the post (filler, other nouns, unknown words)
REPEAT_PENALTY = 0.5  # per repeated word
OVER_BUDGET_PENALTY = 0.5  # per post noun beyond the headline's three


def raw_score(prompt: str, response: str) -> float:
    """Unbounded judge score; :func:`headline_score` squashes it into (-2, 2)::

        BASE + SELECTION_SCALE · Σ_{first 3 post nouns named} w(n) / Σ_{3 most newsworthy} w(n)
             + ORDER_BONUS · (consecutive named pairs in decreasing w) / 2 − penalties

    with ``w`` the hidden newsworthiness; penalties for words that are not post nouns, repeats and post
    nouns beyond the third. The oracle headline scores ``BASE + SELECTION_SCALE + ORDER_BONUS`` (1.6).
    """
    in_post = set(post_nouns(prompt))
    best = sum(IMPORTANCE[noun] for noun in top_nouns(prompt))
    named: list[str] = []
    seen: set[str] = set()
    penalty = 0.0
    for word in (w for w in tokens(response) if w not in SPECIAL_TOKENS):
        if word in seen:
            penalty += REPEAT_PENALTY
        elif word not in in_post:
            penalty += EXTRA_PENALTY
        elif len(named) == HEADLINE_NOUNS:
            penalty += OVER_BUDGET_PENALTY
        else:
            named.append(word)
        seen.add(word)
    selection = sum(IMPORTANCE[noun] for noun in named) / best if best > 0 else 0.0
    ordered = sum(1 for a, b in zip(named, named[1:]) if IMPORTANCE[a] > IMPORTANCE[b])
    return BASE + SELECTION_SCALE * selection + ORDER_BONUS * ordered / (HEADLINE_NOUNS - 1) - penalty


def headline_score(prompt: str, response: str) -> float:
    """Judge score in (-2, 2): ``2 · tanh(raw / 2)``."""
    return 2.0 * math.tanh(raw_score(prompt, response) / 2.0)


def require_headline_prompts(prompts: Sequence[object]) -> None:
    """Scores mean something only for the task's own prompts (a post with nouns, ending in ``headline:``)."""
    for index, prompt in enumerate(prompts):
        if not (isinstance(prompt, str) and prompt.rstrip().endswith(PROMPT_SUFFIX)
                and len(post_nouns(prompt)) >= HEADLINE_NOUNS):
            raise RecipeError("model.init_args.reward", f"the headline task's gold judge scores the task's posts "
                              f"only, but prompt {index} is not one ({repr(prompt)[:80]})",
                              "for your own data, use your own reward (e.g. rlhf_lightning.rewards.RewardModel "
                              "or FunctionReward) as the reward and as the evaluation judge")


class HeadlineJudge(RewardSource):
    """The headline task's gold reward (:func:`headline_score`): name the post's three most newsworthy
    nouns, most newsworthy first, and nothing else. The oracle headline
    (:func:`~.corpus.oracle_headline`) is the best response."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        require_headline_prompts(prompts)
        return torch.tensor([headline_score(p, r) for p, r in zip(prompts, responses)], dtype=torch.float32)

    def best_responses(self, prompts: Sequence[str]) -> list[str]:
        """The oracle headlines."""
        return [oracle_headline(prompt) for prompt in prompts]
