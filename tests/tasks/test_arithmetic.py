"""The embedded verifiable-reward (addition) task: deterministic build, splits with an ``answer`` column, the
0/1 reward's rules (hand-checked and hard to game), its recipes, and RL raising accuracy over the SFT model."""

from __future__ import annotations

import json

import pytest
import torch

from rlhf_lightning.rewards import FunctionReward
from rlhf_lightning.tasks.arithmetic import (ArithmeticTask, build_task, carry_free_sum, exact_answer, has_carry,
                                             make_splits, parse_answer, read_split)
from rlhf_lightning.tasks.arithmetic.problems import human_examples

SMALL = dict(n_train=256, n_validation=16, n_test=32, sft_steps=3, progress=False)


# ------------------------------------------------------------------------------------------------ problems
def test_carry_rules_hand_checked():
    assert carry_free_sum(57, 68) == "15" and has_carry(57, 68)
    assert carry_free_sum(12, 7) == "19" and not has_carry(12, 7)
    assert carry_free_sum(95, 5) == "90" and has_carry(95, 5)
    assert carry_free_sum(0, 0) == "0" and not has_carry(0, 0)


def test_splits_are_disjoint_deterministic_and_sft_answers_are_sloppy_only_on_carries():
    a, b = make_splits({"train": 500, "test": 100}, 3), make_splits({"train": 500, "test": 100}, 3)
    assert a == b and make_splits({"train": 500, "test": 100}, 4) != a
    assert not {p.prompt for p in a["train"]} & {p.prompt for p in a["test"]}
    examples = human_examples(a["train"], 3)
    for problem, example in zip(a["train"], examples):
        assert example.prompt == problem.prompt
        assert example.reference == problem.answer or (has_carry(problem.a, problem.b)
                                                       and example.reference == carry_free_sum(problem.a, problem.b))
    assert any(e.reference != p.answer for p, e in zip(a["train"], examples))


# ------------------------------------------------------------------------------------------------ build
def test_build_is_deterministic_and_splits_hold_the_answer(tmp_path):
    first = build_task(tmp_path / "a", seed=1, **SMALL)
    second = build_task(tmp_path / "b", seed=1, **SMALL)
    for split in ("train", "validation", "test"):
        assert first.split(split).read_bytes() == second.split(split).read_bytes()
        rows = read_split(first.split(split))
        assert rows and all(set(r) == {"prompt", "answer"} for r in rows)
        for r in rows:
            left, right = r["prompt"].rstrip("=").split("+")
            assert r["prompt"].endswith("=") and r["answer"] == str(int(left) + int(right))
    assert (first.sft / "model.safetensors").read_bytes() == (second.sft / "model.safetensors").read_bytes()
    stamp = first.manifest.stat().st_mtime_ns
    build_task(tmp_path / "a", seed=1, **SMALL)  # valid cache: nothing rewritten
    assert first.manifest.stat().st_mtime_ns == stamp


def test_the_saved_model_and_tokenizer_load_back(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    files = build_task(tmp_path, **SMALL)
    tokenizer = AutoTokenizer.from_pretrained(files.sft)
    model = AutoModelForCausalLM.from_pretrained(files.sft)
    ids = tokenizer("57+68=", add_special_tokens=False).input_ids
    assert len(ids) == 6 and tokenizer.decode(ids + [tokenizer.eos_token_id], skip_special_tokens=True) == "57+68="
    assert model(torch.tensor([ids])).logits.shape == (1, 6, len(tokenizer))


def test_data_module_exposes_the_answer_column(tmp_path):
    build_task(tmp_path, **SMALL)
    module = ArithmeticTask(root=str(tmp_path), sft_steps=SMALL["sft_steps"], batch_size=4)
    module.prepare_data = lambda: None  # built above with the small sizes
    module.setup("fit")
    rows = module.eval_rows("test", 4)
    assert all(row["columns"]["answer"] == row["reference"] for row in rows)


# ------------------------------------------------------------------------------------------------ reward
@pytest.mark.parametrize("response, score", [
    ("125", 1.0), (" 125 ", 1.0), ("125\n", 1.0),
    ("", 0.0), ("   ", 0.0), ("124", 0.0), ("15", 0.0),          # empty, wrong, carries forgotten
    ("125125", 0.0), ("125 125", 0.0), ("1 2 5", 0.0),         # repeated, spaced out
    ("124 125", 0.0), ("125 124", 0.0), ("57 68 125", 0.0),    # many numbers
    ("125abc", 0.0), ("125=", 0.0), ("125+0", 0.0), ("0125", 0.0), ("-125", 0.0), ("125.0", 0.0),
    ("57+68=125", 0.0), ("57+68=", 0.0), ("=125", 0.0),        # the prompt echoed
])
def test_exact_answer_rules(response, score):
    assert exact_answer(["57+68="], [response], ["125"]) == [score]


def test_parse_answer_and_zero():
    assert parse_answer("0") == "0" and parse_answer("00") is None and parse_answer("7") == "7"
    assert exact_answer(["0+0="], ["0"], ["0"]) == [1.0]


def test_the_reward_reads_the_answer_column_through_function_reward():
    reward = FunctionReward("rlhf_lightning.tasks.arithmetic.exact_answer")
    assert reward.missing_columns(["answer"]) == [] and reward.missing_columns([]) == ["answer"]
    scores = reward.score(["1+2=", "3+4="], ["3", "8"], answer=["3", "7"])
    assert scores.tolist() == [1.0, 0.0]


# ------------------------------------------------------------------------------------------------ end to end
def test_rloo_raises_accuracy_over_the_sft_model(tmp_path):
    """A short RLOO run from the task's real SFT warm start (built once under runs/.cache/arithmetic)."""
    from rlhf_lightning.cli import main

    root = tmp_path / "run"
    args = ["run", "recipes/verifiable/rloo.yaml", "--trainer.default_root_dir", str(root), "--overwrite", "true",
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.limit_train_batches", "24"]
    try:
        main(args)
    except SystemExit as exit_info:
        assert exit_info.code in (0, None)
    summary = json.loads((root / "summary.json").read_text())
    assert 0.2 < summary["sft_reward"] < 0.8, summary
    assert summary["reward"] > summary["sft_reward"] + 0.1, summary
