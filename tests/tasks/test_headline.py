"""The embedded headline task: the judge's rules (hand-checked, the oracle is the best, degenerate headlines
score low), editors' and interns' headlines, a deterministic cached build, its preference pairs, and RL
raising the gold reward over the SFT model."""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics

import pytest
import torch

from rlhf_lightning.errors import RecipeError
from rlhf_lightning.tasks.headline import (IMPORTANCE, HeadlineConfig, HeadlineJudge, build_task, editor_headline,
                                           headline_score, intern_headline, oracle_headline, read_split, top_nouns)
from rlhf_lightning.tasks.headline.corpus import make_splits
from rlhf_lightning.tasks.headline.judge import raw_score
from rlhf_lightning.tasks.summarize.corpus import NOUNS, post_nouns

SMALL = dict(n_train=64, n_validation=8, n_test=16, n_sft=256, sft_steps=3, progress=False)
POSTS = [example.prompt for example in make_splits({"train": 300}, seed=11)["train"]]
PROMPT = "post: barrel compass went bottle very near magnet ladder the never basically letter rocket headline:"


# ------------------------------------------------------------------------------------------------ judge
def test_raw_score_by_hand():
    w = IMPORTANCE
    assert top_nouns(PROMPT) == sorted(post_nouns(PROMPT), key=w.get, reverse=True)[:3]
    a, b, c = top_nouns(PROMPT)
    best = w[a] + w[b] + w[c]
    assert raw_score(PROMPT, "") == pytest.approx(-1.0)
    assert raw_score(PROMPT, f"{a} {b} {c}") == pytest.approx(-1 + 2.0 + 0.6)  # the oracle: 1.6
    assert raw_score(PROMPT, f"{c} {b} {a}") == pytest.approx(-1 + 2.0)  # right nouns, increasing order
    assert raw_score(PROMPT, f"{a} {c} {b}") == pytest.approx(-1 + 2.0 + 0.3)  # one ordered pair of two
    assert raw_score(PROMPT, "barrel ladder") == pytest.approx(-1 + 2 * (w["barrel"] + w["ladder"]) / best
                                                                + 0.6 * (w["barrel"] > w["ladder"]) / 2)
    # a word not in the post, a repeat and a fourth post noun each cost their penalty
    assert raw_score(PROMPT, f"{a} {b} {c} very") == pytest.approx(1.6 - 0.4)
    assert raw_score(PROMPT, f"{a} {b} {c} {a}") == pytest.approx(1.6 - 0.5)
    assert raw_score(PROMPT, f"{a} {b} {c} ladder") == pytest.approx(1.6 - 0.5)
    assert raw_score(PROMPT, f"{a} tiger {b} {c}") == pytest.approx(1.6 - 0.4)  # tiger: not in this post
    assert headline_score(PROMPT, f"{a} {b} {c}") == pytest.approx(2 * math.tanh(0.8))


def test_the_oracle_is_the_best_of_every_headline_from_the_post():
    for prompt in POSTS[:60]:
        nouns = post_nouns(prompt)
        oracle = headline_score(prompt, oracle_headline(prompt))
        for length in range(0, 5):
            for words in itertools.permutations(nouns, length):
                assert headline_score(prompt, " ".join(words)) <= oracle + 1e-12


@pytest.mark.parametrize("name, make", [
    ("empty", lambda p: ""),
    ("whitespace", lambda p: "   "),
    ("one noun repeated", lambda p: " ".join([top_nouns(p)[0]] * 6)),
    ("every noun of the vocabulary", lambda p: " ".join(NOUNS)),
    ("every noun of the post", lambda p: " ".join(post_nouns(p))),
    ("the post echoed", lambda p: p),
    ("the oracle twice", lambda p: f"{oracle_headline(p)} {oracle_headline(p)}"),
])
def test_degenerate_headlines_score_below_the_sft_data(name, make):
    rng = random.Random(0)
    interns = statistics.fmean(headline_score(p, intern_headline(p, rng, HeadlineConfig())) for p in POSTS)
    scores = [headline_score(p, make(p)) for p in POSTS]
    assert statistics.fmean(scores) < interns - 0.5, name
    assert max(scores) < statistics.fmean(headline_score(p, oracle_headline(p)) for p in POSTS) - 0.5, name


def test_judge_scores_task_posts_only_and_knows_the_best_responses():
    judge = HeadlineJudge()
    scores = judge.score(POSTS[:3], [oracle_headline(p) for p in POSTS[:3]])
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert judge.best_responses(POSTS[:2]) == [oracle_headline(p) for p in POSTS[:2]]
    with pytest.raises(RecipeError, match="model.init_args.reward"):
        judge.score(["What is the capital of France?"], ["Paris"])
    with pytest.raises(ValueError):
        judge.score(POSTS[:2], ["a"])


# ------------------------------------------------------------------------------------------------ headlines
def test_editors_pick_three_post_nouns_in_post_order_deterministically():
    for prompt in POSTS[:100]:
        nouns = post_nouns(prompt)
        words = editor_headline(prompt, seed=3).split()
        assert len(words) == 3 == len(set(words)) and set(words) <= set(nouns)
        assert words == [n for n in nouns if n in words]  # the post's order
        assert editor_headline(prompt, seed=3) == " ".join(words)
        assert editor_headline(prompt, noise=0.0).split() == [n for n in nouns if n in top_nouns(prompt)]
    noisy = [editor_headline(p, seed=3) != editor_headline(p, noise=0.0) for p in POSTS]
    assert 0.1 < statistics.fmean(noisy) < 0.9  # the editors are good, not perfect


def test_interns_never_see_newsworthiness():
    rng = random.Random(1)
    config = HeadlineConfig()
    for prompt in POSTS:
        words = intern_headline(prompt, rng, config).split()
        assert len(words) == 3 == len(set(words)) and set(words) <= set(post_nouns(prompt))
    # the interns' choice depends on the position only: swapping which nouns are important changes nothing
    assert config.intern_decay < 1.0 and 0.0 < config.p_intern_shuffle < 1.0


# ------------------------------------------------------------------------------------------------ build
def test_build_is_deterministic_cached_and_keeps_sft_posts_out_of_the_splits(tmp_path):
    first = build_task(tmp_path / "a", seed=2, **SMALL)
    second = build_task(tmp_path / "b", seed=2, **SMALL)
    prompts = {}
    for split, size in (("train", 64), ("validation", 8), ("test", 16)):
        assert first.split(split).read_bytes() == second.split(split).read_bytes()
        rows = read_split(first.split(split))
        assert len(rows) == size and all(set(r) == {"prompt", "reference"} for r in rows)
        assert all(r["prompt"].endswith("headline:") and len(r["reference"].split()) == 3 for r in rows)
        prompts[split] = {r["prompt"] for r in rows}
    assert not (prompts["train"] & prompts["test"]) and not (prompts["validation"] & prompts["test"])
    sft_posts = {e.prompt for e in make_splits({"train": 64, "validation": 8, "test": 16, "sft": 256}, 2)["sft"]}
    assert not sft_posts & set().union(*prompts.values())
    assert (first.sft / "model.safetensors").read_bytes() == (second.sft / "model.safetensors").read_bytes()
    manifest = json.loads(first.manifest.read_text())
    assert manifest["version"].startswith("headline") and manifest["data"]["sizes"]["sft"] == 256
    stamp = first.manifest.stat().st_mtime_ns
    build_task(tmp_path / "a", seed=2, **SMALL)  # a valid cache: nothing rewritten
    assert first.manifest.stat().st_mtime_ns == stamp


def test_preference_pairs_are_ranked_by_the_headline_judge(tmp_path):
    from rlhf_lightning.tasks.summarize.preferences import build_preferences, read_preferences

    options = {k: v for k, v in SMALL.items() if k not in ("progress",)}
    files = build_preferences(tmp_path / "task", seed=0, n_train_pairs=40, n_validation_pairs=8, n_test_pairs=8,
                              label_noise=0.0, max_new_tokens=6, batch_size=64, task_options=options,
                              progress=False, task="headline")
    train_prompts = {r["prompt"] for r in read_split(tmp_path / "task" / "train.jsonl")}
    pairs = read_preferences(files.train)
    assert len(pairs) == 40 and {p["prompt"] for p in pairs} <= train_prompts
    for pair in pairs:
        assert pair["chosen_score"] == pytest.approx(headline_score(pair["prompt"], pair["chosen"]))
        assert pair["rejected_score"] == pytest.approx(headline_score(pair["prompt"], pair["rejected"]))
        assert pair["chosen_score"] > pair["rejected_score"]
    manifest = json.loads(files.manifest.read_text())
    assert manifest["params"]["task"] == "headline"


# ------------------------------------------------------------------------------------------------ end to end
def test_rebel_raises_the_gold_reward_over_the_sft_model(tmp_path):
    """A short REBEL run of the shipped recipe from the task's real SFT warm start (built once under
    runs/.cache/headline)."""
    from rlhf_lightning.cli import main

    root = tmp_path / "run"
    try:
        main(["run", "recipes/headline/rebel.yaml", "--trainer.default_root_dir", str(root), "--overwrite", "true",
              "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
              "--trainer.limit_train_batches", "24"])
    except SystemExit as exit_info:
        assert exit_info.code in (0, None)
    summary = json.loads((root / "summary.json").read_text())
    assert summary["sft_win_rate_vs_reference"] <= 0.35, summary
    assert summary["reward"] > summary["sft_reward"] + 0.08, summary
    assert summary["win_rate_vs_sft"] > 0.55, summary
    assert summary["reward"] < summary["oracle_reward"] - 0.05, summary
