"""The gold judge of the summarisation task: ordering of good and degenerate responses, ties, values."""

import math
import random

import torch

from rlhf_lightning.rewards import RewardSource
from rlhf_lightning.tasks.summarize import GoldJudge, gold_score, oracle_summary, post_nouns
from rlhf_lightning.tasks.summarize.corpus import FILLERS, TIC, make_splits, post_words
from rlhf_lightning.tasks.summarize.judge import IMPORTANCE, REPEAT_PENALTY, WORD_PENALTY

EXAMPLES = make_splits({"test": 300}, seed=7)["test"]
PROMPTS = [ex.prompt for ex in EXAMPLES]
REFERENCES = [ex.reference for ex in EXAMPLES]


def test_judge_is_a_reward_source_returning_float32_vector():
    judge = GoldJudge()
    scores = judge.score(PROMPTS[:5], REFERENCES[:5])
    assert isinstance(judge, RewardSource)
    assert scores.dtype == torch.float32 and scores.shape == (5,)
    assert bool(((scores > -2) & (scores < 2)).all())


def test_degenerate_responses_score_below_the_reference_on_every_prompt():
    judge = GoldJudge()
    reference = judge.score(PROMPTS, REFERENCES)
    degenerate = {
        "empty": [""] * len(PROMPTS),
        "noun x10": [" ".join([post_nouns(p)[0]] * 10) for p in PROMPTS],
        "filler x10": [" ".join(["the"] * 10) for _ in PROMPTS],
        "post copy": [" ".join(post_words(p)) for p in PROMPTS],
        "prompt copy": list(PROMPTS),
    }
    for name, responses in degenerate.items():
        scores = judge.score(PROMPTS, responses)
        assert bool((scores < reference).all()), name


def test_oracle_is_at_least_the_reference_and_beats_flawed_variants():
    judge = GoldJudge()
    oracle = [oracle_summary(p) for p in PROMPTS]
    oracle_scores = judge.score(PROMPTS, oracle)
    assert bool((oracle_scores >= judge.score(PROMPTS, REFERENCES)).all())
    for flawed in ([f"{TIC} {o}" for o in oracle],  # verbal tic
                   [" ".join(post_nouns(p)[:-1]) for p in PROMPTS],  # last noun dropped
                   [" ".join(reversed(post_nouns(p))) for p in PROMPTS],  # wrong order
                   [f"{o} {o}" for o in oracle]):  # repeated
        assert bool((judge.score(PROMPTS, flawed) < oracle_scores).all())


def test_distinct_responses_rarely_tie():
    rng = random.Random(0)
    ties = pairs = 0
    for prompt in PROMPTS[:100]:
        nouns = post_nouns(prompt)
        responses = set()
        for _ in range(12):
            words = rng.sample(nouns, rng.randint(1, len(nouns)))
            for _ in range(rng.randint(0, 2)):
                words.insert(rng.randint(0, len(words)), rng.choice(FILLERS))
            responses.add(" ".join(words))
        scores = [gold_score(prompt, r) for r in responses]
        for i in range(len(scores)):
            for j in range(i):
                pairs += 1
                ties += scores[i] == scores[j]
    assert pairs > 1000
    assert ties / pairs < 0.01


def test_hand_checked_score():
    prompt = "post: the apple and banana saw cherry summary:"
    assert post_nouns(prompt) == ["apple", "banana", "cherry"]
    a, b, c = IMPORTANCE["apple"], IMPORTANCE["banana"], IMPORTANCE["cherry"]
    # basically(extraneous) apple(position 1) cherry(position 2) the(extraneous) apple(repeat);
    # one of the two consecutive-noun pairs is in order; 5 tokens is not over 3 nouns + 2.
    raw = (-1.0 + 2.5 * (0.98 * a + 0.96 * c) / (a + b + c) + 0.3 * 0.5
           - WORD_PENALTY["basically"] - WORD_PENALTY["the"] - REPEAT_PENALTY)
    expected = 2.0 * math.tanh(raw / 2.0)
    assert math.isclose(gold_score(prompt, "basically apple cherry the apple"), expected, rel_tol=1e-12)
    assert math.isclose(expected, -0.34152, abs_tol=1e-4)  # pins the fixed judge weights
    # parsing: case, punctuation, special tokens and bare post text make no difference
    oracle = gold_score(prompt, "apple banana cherry")
    assert gold_score(prompt, "Apple, banana: cherry. <eos>") == oracle
    assert gold_score("the apple and banana saw cherry", "apple banana cherry") == oracle
    assert math.isclose(oracle, 2.0 * math.tanh((-1.0 + 2.5 * (a + 0.98 * b + 0.96 * c) / (a + b + c) + 0.3) / 2.0))


def test_the_gold_judge_refuses_prompts_that_are_not_the_tasks():
    """On a user's data the gold judge's scores would mean nothing: a clear error instead."""
    import pytest

    from rlhf_lightning.errors import RecipeError
    from rlhf_lightning.tasks.summarize import GoldPreference

    for prompt in ("What is 2 + 2?", [{"role": "user", "content": "hi"}]):
        with pytest.raises(RecipeError, match="gold judge scores the task's posts only"):
            GoldJudge().score([prompt], ["4"])
        with pytest.raises(RecipeError, match="gold judge scores the task's posts only"):
            GoldPreference().preference([prompt], ["4"], ["5"])
