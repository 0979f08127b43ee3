"""Rewards that see the data: every other column of the prompt data reaches the reward sources by name,
aligned with the responses, and several weighted sources sum to the raw reward (each part logged)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from rlhf_lightning.errors import RecipeError
from rlhf_lightning.rewards import FunctionReward, RewardTerm, WeightedRewards, accepted_columns
from runs import RecordRollouts, fit_with_callbacks, run_cli, tiny_run_args, without_evaluation
from tiny import make_prompt_files

SEEN: list[tuple] = []


def record_alignment(prompts, responses, answer, position):
    """A verifiable reward that checks every row got its own prompt's columns (answer = the prompt's first noun)."""
    SEEN.append((list(prompts), list(answer), list(position)))
    return [float(bool(r.split()) and r.split()[0] == a) for r, a in zip(responses, answer)]


def correct(prompts, responses, answer, **_):
    """1 for each word of the response that equals the row's ``answer`` column, as a share of the words."""
    return [sum(w == a for w in r.split()) / max(len(r.split()), 1) for r, a in zip(responses, answer)]


def length_penalty(prompts, responses):
    return [-0.1 * len(r.split()) for r in responses]


def _answer_files(root: Path, answer_of) -> dict:
    """The tiny prompt files with an ``answer`` column (``answer_of(row)``) and each row's ``position``."""
    root.mkdir(parents=True)
    out = {}
    files = make_prompt_files(root)
    for split, path in files.items():
        records = [json.loads(line) for line in path.read_text().splitlines()]
        for i, record in enumerate(records):
            record["answer"] = answer_of(record)
            record["position"] = i
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        out[split] = path
    return out


def test_columns_reach_the_reward_aligned_with_the_responses(tiny_model, tmp_path):
    data = _answer_files(tmp_path / "data", lambda record: record["prompt"].split()[2])
    SEEN.clear()
    args = without_evaluation(tiny_run_args(tiny_model, data, tmp_path / "run", batches=2, extra=[
        "--model.reward.function", "test_rewards_with_columns.record_alignment"]))
    run_cli(args)
    assert len(SEEN) == 2
    for prompts, answers, positions in SEEN:
        assert len(prompts) == len(answers) == len(positions) == 16  # 8 prompts × 2 samples
        assert all(a == p.split()[2] for p, a in zip(prompts, answers))  # each row's own column
        assert positions[0::2] == positions[1::2]  # both samples of a prompt share its row


def test_a_verifiable_reward_reading_an_answer_column_is_learned(tiny_model, tmp_path):
    """The reward (and the evaluation judge, the same source) reads the ``answer`` column of every row."""
    data = _answer_files(tmp_path / "data", lambda record: "good")
    run_cli(tiny_run_args(tiny_model, data, tmp_path / "run", batches=8, extra=[
        "--model.reward.function", "test_rewards_with_columns.correct"]))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["sft_reward"] < 0.3
    assert summary["reward"] > summary["sft_reward"] + 0.5, summary
    assert summary["win_rate_vs_sft"] >= 0.75, summary


def test_two_weighted_sources_sum_to_the_raw_reward_and_are_logged(tiny_model, tiny_data, tmp_path):
    data = _answer_files(tmp_path / "data", lambda record: "good")
    reward = json.dumps([
        {"source": {"class_path": "rlhf_lightning.rewards.FunctionReward",
                    "init_args": {"function": "test_rewards_with_columns.correct"}}, "weight": 1.0},
        {"source": {"class_path": "rlhf_lightning.rewards.FunctionReward",
                    "init_args": {"function": "test_rewards_with_columns.length_penalty"}},
         "weight": 0.5, "name": "brevity"},
    ])
    args = without_evaluation(tiny_run_args(tiny_model, data, tmp_path / "run", batches=3))
    at = args.index("--model.reward")
    args = args[:at] + ["--model.reward", reward] + args[at + 4:]  # replace the single source and its function
    recorder = RecordRollouts()
    cli = fit_with_callbacks(args, recorder)
    assert isinstance(cli.model.reward, WeightedRewards) and cli.model.reward.names == ["correct", "brevity"]
    for rollout in recorder.rollouts:
        texts = cli.model.tokenizer.batch_decode(rollout.input_ids[:, rollout.prompt_length:], skip_special_tokens=True)
        expected = torch.tensor([c + 0.5 * b for c, b in zip(correct(None, texts, ["good"] * len(texts)),
                                                                length_penalty(None, texts))])
        torch.testing.assert_close(rollout.rewards, expected)
        metrics = rollout.metrics
        assert metrics["reward/raw"] == pytest.approx(metrics["reward/correct"] + 0.5 * metrics["reward/brevity"],
                                                      abs=1e-6)
    rows = list(csv.DictReader(open(tmp_path / "run" / "lightning_logs" / "version_0" / "metrics.csv")))
    assert {"reward/correct", "reward/brevity", "reward/raw"} <= set(rows[0])


def test_columns_a_source_takes():
    def named(prompts, responses, answer):
        return []

    def everything(prompts, responses, **columns):
        return []

    columns = {"answer": [1], "tests": [2]}
    assert accepted_columns(named, columns) == {"answer": [1]}
    assert accepted_columns(everything, columns) == columns
    assert accepted_columns(length_penalty, columns) == {}  # an old-style fn(prompts, responses) still works
    assert FunctionReward("test_rewards_with_columns.correct").missing_columns(["tests"]) == ["answer"]
    assert FunctionReward("test_rewards_with_columns.correct").missing_columns(["answer"]) == []


def test_bad_weighted_sums_are_recipe_errors():
    source = FunctionReward("test_rewards_with_columns.correct")
    with pytest.raises(RecipeError, match="empty"):
        WeightedRewards([])
    with pytest.raises(RecipeError, match=r"reward\[1\]\.weight"):
        WeightedRewards([RewardTerm(source), RewardTerm(source, weight=float("nan"))])
    assert WeightedRewards([RewardTerm(source), RewardTerm(source)]).names == ["correct", "correct_1"]


def prefer_the_answer(prompts, responses_a, responses_b, answer):
    """P(a ≻ b) = 1 when only a is the row's answer, 0 when only b is, ½ otherwise."""
    return [0.5 + 0.5 * ((a == t) - (b == t)) for a, b, t in zip(responses_a, responses_b, answer)]


def test_preference_functions_get_the_columns_of_each_pair():
    from rlhf_lightning.rewards import FunctionPreference

    source = FunctionPreference("test_rewards_with_columns.prefer_the_answer")
    # two prompts, three samples each; the answer column repeats per row as the rollout gives it
    responses = ["cat", "dog", "cat", "sun", "sun", "moon"]
    answer = ["cat"] * 3 + ["moon"] * 3
    rewards = source.score_groups(["p"] * 6, responses, 3, answer=answer)
    # prompt 1: each "cat" beats "dog" and ties the other "cat"; prompt 2: "moon" beats both "sun"s
    torch.testing.assert_close(rewards, torch.tensor([0.75, 0.0, 0.75, 0.25, 0.25, 1.0]))
    assert source.missing_columns(["reference"]) == ["answer"]


def test_a_sum_with_a_preference_source_is_not_a_pointwise_judge():
    from rlhf_lightning.rewards import FunctionPreference, is_pointwise

    pointwise = FunctionReward("test_rewards_with_columns.correct")
    preference = FunctionPreference("test_rewards_with_columns.prefer_the_answer")
    assert is_pointwise(pointwise) and is_pointwise(WeightedRewards([RewardTerm(pointwise)]))
    assert not is_pointwise(preference)
    assert not is_pointwise(WeightedRewards([RewardTerm(pointwise), RewardTerm(preference, weight=0.5)]))


def singular(prompt, response, answer):
    """Parameters named like columns of the data (a ``response`` column exists): no clash."""
    return [float(r == a) for r, a in zip(response, answer)]


def test_a_column_named_like_the_functions_own_parameter_does_not_clash():
    source = FunctionReward("test_rewards_with_columns.singular")
    scores = source.score_terms(["p", "q"], ["cat", "dog"], 1, response=["x", "y"], answer=["cat", "cat"])[0]
    assert scores.tolist() == [1.0, 0.0]
    assert source.missing_columns(["response"]) == ["answer"]


def test_reward_part_names_must_not_hide_the_rollouts_own_metrics():
    with pytest.raises(RecipeError, match=r"reward\[0\]\.name.*reward/raw"):
        WeightedRewards([RewardTerm(FunctionReward("test_rewards_with_columns.correct"), name="raw")])


def test_chat_prompts_and_a_reward_model_without_a_chat_template_are_a_recipe_error(tmp_path):
    from rlhf_lightning.rewards import RewardModel
    from tiny import make_reward_model_dir

    reward = RewardModel(str(make_reward_model_dir(tmp_path / "reward_model")))
    with pytest.raises(RecipeError, match="no chat template"):
        reward.score([[{"role": "user", "content": "say : cat"}]], ["good"])
    assert reward.score(["say : cat"], ["good"]).shape[0] == 1  # text prompts still score
