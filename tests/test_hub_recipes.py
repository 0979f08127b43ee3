"""The recipes for your own model and data (recipes/hub/) run as written, on CPU, against tiny local
stand-ins: the models they name by hub id are put into a temporary Hugging Face cache and loaded offline,
the data files they name are written with tiny rows, and only the hardware and length keys are overridden."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import WORDS, fill_hub_cache, make_chat_tokenizer, make_model_dir

ROOT = Path(__file__).parents[1]
HUB = ROOT / "recipes" / "hub"
ON_CPU = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
          "--trainer.limit_train_batches", "2", "--trainer.logger", "false", "--data.init_args.batch_size", "4"]


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _data(root: Path) -> None:
    nouns = WORDS[4:10]
    prompts = [f"say : {nouns[i % 6]} {nouns[(i * 5 + 1) % 6]}" for i in range(24)]
    for split in ("train", "validation", "test"):
        _jsonl(root / "data/tldr" / f"sft_{split}.jsonl", [{"prompt": p, "response": "good good"} for p in prompts])
        _jsonl(root / "data/tldr" / f"pairs_{split}.jsonl",
               [{"prompt": p, "chosen": "good good", "rejected": "bad red"} for p in prompts])
        _jsonl(root / "data/tldr" / f"prompts_{split}.jsonl", [{"prompt": p, "reference": "good"} for p in prompts])
        _jsonl(root / "data/chat" / f"pairs_{split}.jsonl",
               [{"prompt": [{"role": "user", "content": p}], "chosen": "good", "rejected": "bad"} for p in prompts])
        _jsonl(root / "data/math" / f"{split}.jsonl",
               [{"messages": [{"role": "user", "content": p}], "answer": "cat"} for p in prompts])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A working directory with the data files and an offline Hugging Face cache holding the stand-ins."""
    root = tmp_path_factory.mktemp("hub_recipes")
    _data(root)
    models = root / "models"
    fill_hub_cache(root / "hf", "EleutherAI/pythia-1.4b-deduped", make_model_dir(models / "pythia"))
    fill_hub_cache(root / "hf", "Qwen/Qwen2.5-0.5B-Instruct",
                   make_model_dir(models / "qwen", tokenizer=make_chat_tokenizer("<|im_end|>")))
    return root


def _run(workspace: Path, recipe: str, *extra: str) -> dict:
    env = {**os.environ, "HF_HOME": str(workspace / "hf"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "rlhf_lightning.cli", "run", str(HUB / recipe), *ON_CPU, *extra]
    result = subprocess.run(command, cwd=workspace, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    name = recipe.removesuffix(".yaml")
    return json.loads((workspace / "runs" / "hub" / name / "summary.json").read_text())


def test_the_tldr_pipeline_runs_from_hub_ids(workspace):
    assert _run(workspace, "tldr/sft.yaml")["train_batches"] == 2
    assert "rm_accuracy" in _run(workspace, "tldr/reward_model.yaml")
    for stage in ("tldr/rebel.yaml", "tldr/ppo.yaml", "tldr/dpo.yaml"):
        summary = _run(workspace, stage)
        assert {"win_rate_vs_sft", "win_rate_vs_reference", "reward", "kl"} <= set(summary), (stage, summary)


def test_the_chat_dpo_and_verifiable_grpo_recipes_run(workspace):
    assert _run(workspace, "chat_dpo.yaml")["train_batches"] == 2
    summary = _run(workspace, "grpo_math.yaml", "--rollout.init_args.max_new_tokens", "8",
                   "--model.init_args.objective.init_args.group_size", "2")
    assert {"win_rate_vs_sft", "reward"} <= set(summary)
