"""The hidden gold judge of the summarisation task: a pure function of (prompt, response) text."""

from __future__ import annotations

import math
import random
from typing import Sequence

import torch

from rlhf_lightning.errors import RecipeError
from rlhf_lightning.rewards import PreferenceSource, RewardSource
from rlhf_lightning.tasks.summarize.corpus import FILLERS, NOUNS, oracle_summary, post_nouns, tokens

JUDGE_SEED = 20240617
RECALL_SCALE = 2.5  # raw points for mentioning every noun of the post
ORDER_BONUS = 0.3  # raw points when every consecutive pair of nouns is in the post's order
BASE = -1.0  # raw score of the empty response
POSITION_DISCOUNT = 0.02  # a noun's credit shrinks by this much per token before it
REPEAT_PENALTY = 0.4  # per repeated token
UNKNOWN_PENALTY = 0.4  # per extraneous word outside the task vocabulary
OVERLENGTH_PENALTY = 0.1  # per token beyond (number of post nouns + 2)
SPECIAL_TOKENS = frozenset({"<eos>", "<pad>", "<s>", "</s>"})


def _weights(seed: int) -> tuple[dict[str, float], dict[str, float]]:
    """Fixed noun importances in [0.5, 1.5] and per-word penalties in [0.3, 0.5] for extraneous words."""
    rng = random.Random(seed)
    importance = {noun: rng.uniform(0.5, 1.5) for noun in NOUNS}
    penalty = {word: rng.uniform(0.3, 0.5) for word in (*NOUNS, *FILLERS)}
    return importance, penalty


IMPORTANCE, WORD_PENALTY = _weights(JUDGE_SEED)


def raw_score(prompt: str, response: str) -> float:
    """Unbounded judge score; :func:`gold_score` squashes it into (-2, 2).

    ``BASE + RECALL_SCALE · (discounted weighted recall) + ORDER_BONUS · (share of ordered pairs)
    − penalties`` for extraneous words (filler, nouns not in the post, unknown words), repeats and
    over-length.
    """
    nouns = post_nouns(prompt)
    rank = {noun: i for i, noun in enumerate(nouns)}
    total_weight = sum(IMPORTANCE[noun] for noun in nouns)
    words = [w for w in tokens(response) if w not in SPECIAL_TOKENS]

    credit = penalty = 0.0
    seen: set[str] = set()
    mentioned: list[int] = []
    for position, word in enumerate(words):
        if word in seen:
            penalty += REPEAT_PENALTY
            continue
        seen.add(word)
        if word in rank:
            credit += IMPORTANCE[word] * max(0.0, 1.0 - POSITION_DISCOUNT * position)
            mentioned.append(rank[word])
        else:
            penalty += WORD_PENALTY.get(word, UNKNOWN_PENALTY)
    penalty += OVERLENGTH_PENALTY * max(0, len(words) - len(nouns) - 2)

    recall = credit / total_weight if total_weight > 0 else 0.0
    ordered = sum(1 for a, b in zip(mentioned, mentioned[1:]) if a < b)
    order = ordered / max(1, len(nouns) - 1)
    return BASE + RECALL_SCALE * recall + ORDER_BONUS * order - penalty


def gold_score(prompt: str, response: str) -> float:
    """Judge score in (-2, 2): ``2 · tanh(raw / 2)`` (monotone, near-linear around 0)."""
    return 2.0 * math.tanh(raw_score(prompt, response) / 2.0)


def require_task_prompts(prompts: Sequence[object]) -> None:
    """The gold judge knows the embedded task's posts only: a prompt that is not one (no post nouns, or chat
    messages) would get a meaningless score, so it is a recipe error instead."""
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not post_nouns(prompt):
            shown = repr(prompt)[:80]
            raise RecipeError("model.init_args.reward", f"the embedded task's gold judge scores the task's posts only, "
                              f"but prompt {index} is not one ({shown}); its scores would mean nothing",
                              "for your own data, use your own reward (e.g. rlhf_lightning.rewards.RewardModel or "
                              "FunctionReward) as the reward and as the evaluation judge")


class GoldJudge(RewardSource):
    """The task's gold reward: scores responses against the post's content nouns.

    Higher for summaries that mention the post's important nouns, in order, early and without
    filler or repeats; the oracle summary (:func:`~.corpus.oracle_summary`) is the best response.
    Prompts may be the task's prompt strings or bare post text.
    """

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        require_task_prompts(prompts)
        return torch.tensor([gold_score(p, r) for p, r in zip(prompts, responses)], dtype=torch.float32)

    def best_responses(self, prompts: Sequence[str]) -> list[str]:
        """The oracle summaries: the post's important nouns, in order."""
        return [oracle_summary(prompt) for prompt in prompts]


class GoldPreference(PreferenceSource):
    """The task's gold judge as a preference model (for SPO-style preference rewards, REBEL paper App. C)::

        P(a ≻ b | x) = σ((gold(x, a) − gold(x, b)) / τ)

    with ``gold`` = :func:`gold_score` in (-2, 2). Exactly skew-symmetric (``P(a ≻ b) + P(b ≻ a) = 1``)
    and transitive, so it is a check on the preference machinery rather than a source of intransitive
    preferences. As a training reward each response gets its mean win probability against the other
    samples of its prompt; evaluation still needs a pointwise judge (:class:`GoldJudge`).

    Args:
        temperature: τ > 0; smaller τ makes the preference closer to a hard comparison of gold scores.
    """

    def __init__(self, temperature: float = 0.25) -> None:
        if not temperature > 0:
            raise RecipeError("model.init_args.reward.init_args.temperature", f"must be > 0, got {temperature}")
        self.temperature = temperature

    def preference(self, prompts: Sequence[str], responses_a: Sequence[str],
                   responses_b: Sequence[str]) -> torch.Tensor:
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise ValueError(f"got {len(prompts)} prompts, {len(responses_a)} and {len(responses_b)} responses")
        require_task_prompts(prompts)
        diff = torch.tensor([gold_score(x, a) - gold_score(x, b)
                             for x, a, b in zip(prompts, responses_a, responses_b)], dtype=torch.float32)
        return torch.sigmoid(diff / self.temperature)
