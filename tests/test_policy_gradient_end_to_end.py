"""End-to-end REINFORCE, RLOO and GRPO runs on the tiny model with the 'good'-word reward.

The random tiny model almost never says 'good' (sft_reward ≈ 0); each objective must raise the reward
clearly within 8 rollout batches. (With the loss sign flipped or the advantages zeroed, the same runs stay
at reward 0, so these tests do catch a wrong sign.)
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from rlhf_lightning.cli import find_recipe_error
from rlhf_lightning.errors import RecipeError
from runs import run_cli, tiny_run_args



def summary_of(root: Path) -> dict:
    return json.loads((root / "summary.json").read_text())


def logged_rows(root: Path) -> list[dict[str, str]]:
    (path,) = root.glob("lightning_logs/version_*/metrics.csv")
    with open(path) as handle:
        return list(csv.DictReader(handle))


def logged_columns(root: Path) -> set[str]:
    return set(logged_rows(root)[0])


def assert_learned(summary: dict, name: str) -> None:
    assert summary["objective"] == name
    assert summary["sft_reward"] < 0.3
    assert summary["reward"] > summary["sft_reward"] + 0.5, summary
    assert summary["win_rate_vs_sft"] >= 0.75, summary


def test_reinforce_learns_and_checkpoints_its_baseline(tiny_model, tiny_data, tmp_path):
    checkpoints = ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                   "--trainer.callbacks.dirpath", str(tmp_path / "checkpoints"),
                   "--trainer.callbacks.save_last", "true", "--trainer.callbacks.save_top_k", "0"]
    cli = run_cli(tiny_run_args(tiny_model, tiny_data, tmp_path, batches=8,
                                objective=["--model.objective", "rlhf_lightning.objectives.reinforce.REINFORCE"],
                                extra=checkpoints))
    assert_learned(summary_of(tmp_path), "reinforce")
    objective = cli.model.objective
    assert cli.trainer.global_step == 8
    assert int(objective.baseline_updates) == 8
    shaped = [float(row["reward/shaped"]) for row in logged_rows(tmp_path) if row.get("reward/shaped")]
    assert len(shaped) == 8
    expected = shaped[0]  # b = the first batch's mean, then b ← 0.9·b + 0.1·mean r̃
    for value in shaped[1:]:
        expected = 0.9 * expected + 0.1 * value
    assert float(objective.baseline) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert float(state["objective.baseline"]) == pytest.approx(float(objective.baseline))
    assert int(state["objective.baseline_updates"]) == 8
    assert {"loss/policy", "reinforce/baseline", "reward/raw"} <= logged_columns(tmp_path)


@pytest.mark.parametrize("k", [2, 4])
def test_rloo_learns(tiny_model, tiny_data, tmp_path, k):
    cli = run_cli(tiny_run_args(tiny_model, tiny_data, tmp_path, batches=8,
                                objective=["--model.objective", "rlhf_lightning.objectives.rloo.RLOO",
                                           "--model.objective.k", str(k)]))
    summary = summary_of(tmp_path)
    assert_learned(summary, "rloo")
    assert summary["samples_generated"] == 8 * 8 * k  # batches × prompts × k
    assert cli.trainer.global_step == 8
    assert {"loss/policy", "rloo/advantage_abs"} <= logged_columns(tmp_path)


@pytest.mark.parametrize("variant", [
    [],  # GRPO: std-scaled advantages, per-sequence mean
    ["--model.objective.scale_rewards", "false", "--model.objective.loss_reduction", "constant",
     "--model.objective.constant_length", "6", "--model.micro_batch_size", "8"],  # Dr. GRPO, 2 micro-batches
], ids=["grpo", "dr_grpo"])
def test_grpo_learns(tiny_model, tiny_data, tmp_path, variant):
    args = tiny_run_args(tiny_model, tiny_data, tmp_path, batches=8,
                         objective=["--model.objective", "rlhf_lightning.objectives.grpo.GRPO",
                                    "--model.objective.group_size", "4", *variant])
    cli = run_cli(args + ["--rollout.kl_coef", "0"])  # GRPO's KL is in the loss
    assert_learned(summary_of(tmp_path), "grpo")
    assert cli.trainer.global_step == 8
    assert {"loss/policy", "loss/kl", "grpo/clip_fraction", "grpo/advantage_std"} <= logged_columns(tmp_path)


def test_grpo_micro_batch_size_must_hold_whole_groups(tiny_model, tiny_data, tmp_path):
    args = tiny_run_args(tiny_model, tiny_data, tmp_path,
                         objective=["--model.objective", "rlhf_lightning.objectives.grpo.GRPO",
                                    "--model.objective.group_size", "4"],
                         extra=["--model.micro_batch_size", "6"])
    with pytest.raises(Exception) as info:
        run_cli(args)
    error = find_recipe_error(info.value)
    assert isinstance(error, RecipeError), info.value
    assert error.field == "model.init_args.micro_batch_size"
    assert "multiple of 4" in str(error)


def test_rloo_with_one_sample_is_a_recipe_error(tiny_model, tiny_data, tmp_path):
    args = tiny_run_args(tiny_model, tiny_data, tmp_path,
                         objective=["--model.objective", "rlhf_lightning.objectives.rloo.RLOO", "--model.objective.k", "1"])
    with pytest.raises(Exception) as info:
        run_cli(args)
    error = find_recipe_error(info.value)
    assert isinstance(error, RecipeError), info.value
    assert error.field == "model.init_args.objective.init_args.k"
