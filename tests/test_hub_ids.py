"""Hub ids for the policy (and, by default, its tokenizer), resolved by ``from_pretrained`` through the
Hugging Face cache: tested offline (``HF_HUB_OFFLINE=1``) on a cache filled from a locally built model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tiny import fill_hub_cache

TESTS = Path(__file__).parent


def _run(args: list[str], hf_home: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": str(TESTS), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "rlhf_lightning.cli", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _args(policy: str, data: dict, root: Path, *extra: str) -> list[str]:
    return ["fit", "--seed_everything", "0", "--model", "rlhf_lightning.RLHFModule", "--model.policy.path", policy,
            "--model.objective", "rlhf_lightning.REBEL", "--model.objective.inner_epochs", "1",
            "--model.reward", "rlhf_lightning.rewards.FunctionReward", "--model.reward.function", "tiny.good_word_reward",
            "--data", "rlhf_lightning.data.PromptDataModule", "--data.train_file", str(data["train"]),
            "--data.batch_size", "8", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
            "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root),
            "--rollout.max_new_tokens", "4", *extra]


def test_a_cached_hub_id_trains_offline_with_its_own_tokenizer(tiny_model, tiny_data, tmp_path):
    hf_home = tmp_path / "hf"
    fill_hub_cache(hf_home, "tiny-org/tiny-llama", tiny_model)
    result = _run(_args("tiny-org/tiny-llama", tiny_data, tmp_path / "run"), hf_home, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rollout_batches"] == 2


def test_a_revision_selects_the_cached_commit(tiny_model, tiny_data, tmp_path):
    hf_home = tmp_path / "hf"
    fill_hub_cache(hf_home, "tiny-org/tiny-llama", tiny_model, revision="v1")
    args = _args("tiny-org/tiny-llama", tiny_data, tmp_path / "run", "--model.policy.revision", "v1")
    result = _run(args, hf_home, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_hub_id_that_is_not_cached_offline_is_one_clear_error(tiny_data, tmp_path):
    result = _run(_args("tiny-org/not-there", tiny_data, tmp_path / "run"), tmp_path / "hf", tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    message = result.stderr[result.stderr.index("rlhf-lightning: error"):]
    assert message.startswith("rlhf-lightning: error in the recipe: model.init_args.policy.path:"), message
    assert "HF_HUB_OFFLINE" in message


def test_a_reward_model_hub_id_that_is_not_cached_is_one_clear_error(tiny_model, tiny_data, tmp_path):
    args = _args(str(tiny_model), tiny_data, tmp_path / "run", "--model.reward", "rlhf_lightning.rewards.RewardModel",
                 "--model.reward.path", "tiny-org/no-reward-model")
    result = _run(args, tmp_path / "hf", tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    message = result.stderr[result.stderr.index("rlhf-lightning: error"):]
    assert message.startswith("rlhf-lightning: error in the recipe: model.init_args.reward.init_args.path:"), message


def test_hub_data_set_ids_with_a_split_train_offline(tiny_model, tiny_data, tmp_path):
    """``data.train_file: org/name`` (split train by default) and ``org/name:test``, from the hub cache."""
    import shutil

    files = tmp_path / "dataset_files" / "data"
    files.mkdir(parents=True)
    shutil.copy(tiny_data["train"], files / "train.jsonl")
    shutil.copy(tiny_data["test"], files / "test.jsonl")
    hf_home = tmp_path / "hf"
    fill_hub_cache(hf_home, "tiny-org/say-prompts", tmp_path / "dataset_files", kind="dataset")
    args = _args(str(tiny_model), tiny_data, tmp_path / "run", "--data.train_file", "tiny-org/say-prompts",
                 "--data.test_file", "tiny-org/say-prompts:test",
                 "--trainer.callbacks+=rlhf_lightning.callbacks.WinRateEvaluation",
                 "--trainer.callbacks.max_new_tokens", "4")
    result = _run(args, hf_home, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rollout_batches"] == 2 and summary["eval_prompts"] == 16


def test_a_missing_hub_split_is_one_clear_error(tiny_model, tiny_data, tmp_path):
    import shutil

    (tmp_path / "dataset_files").mkdir()
    shutil.copy(tiny_data["train"], tmp_path / "dataset_files" / "train.jsonl")
    fill_hub_cache(tmp_path / "hf", "tiny-org/say-prompts", tmp_path / "dataset_files", kind="dataset")
    args = _args(str(tiny_model), tiny_data, tmp_path / "run", "--data.train_file", "tiny-org/say-prompts:nope")
    result = _run(args, tmp_path / "hf", tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    message = result.stderr[result.stderr.index("rlhf-lightning: error"):]
    assert message.startswith("rlhf-lightning: error in the recipe: data.init_args.train_file:"), message
    assert "no split 'nope'" in message
