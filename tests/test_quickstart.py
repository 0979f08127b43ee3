"""The quickstart recipe end to end: builds the embedded task from nothing, trains REBEL, reaches the target."""

from __future__ import annotations

import json
from pathlib import Path

from rlhf_lightning.cli import main

RECIPE = Path(__file__).parents[1] / "recipes" / "quickstart.yaml"


def test_quickstart_recipe_beats_sft(tmp_path):
    cache, root = tmp_path / "cache", tmp_path / "quickstart"
    main(["run", str(RECIPE),
          "--data.init_args.root", str(cache), "--model.init_args.policy.path", str(cache / "sft"),
          "--trainer.default_root_dir", str(root), "--trainer.logger.init_args.save_dir", str(root),
          "--trainer.callbacks.init_args.dirpath", str(root / "policy"),
          "--trainer.enable_progress_bar", "false"])
    summary = json.loads((root / "summary.json").read_text())
    assert summary["objective"] == "rebel"
    assert summary["eval_prompts"] >= 200
    assert summary["win_rate_vs_sft"] >= 0.65
    assert summary["win_rate_vs_reference"] > 0.5
    assert summary["reward"] > summary["sft_reward"]
    assert 0 <= summary["kl"] < 50
    assert summary["samples_per_second"] > 0 and summary["train_seconds"] > 0
    assert (root / "policy" / "model.safetensors").exists()
    assert list((root / "wandb").glob("offline-run-*"))  # W&B logged offline, no account needed
    assert (root / "eval_curves.png").exists()
