"""The README's "Writing your own objective": one file next to the recipe, no library edit, and it learns."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from runs import run_cli, tiny_run_args

EXAMPLES = Path(__file__).parents[1] / "recipes" / "examples"


def test_the_pairwise_hinge_example_trains_and_learns(tiny_model, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", [str(EXAMPLES), *sys.path])  # as `rlhf-lightning run` puts the folder there
    objective = ["--model.objective", "pairwise_hinge.PairwiseHinge", "--model.objective.margin", "1.0",
                 "--model.objective.inner_epochs", "2"]
    cli = run_cli(tiny_run_args(tiny_model, tiny_data, tmp_path, batches=8, objective=objective))
    assert cli.model.objective.needs.samples_per_prompt == 2
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["objective"] == "pairwisehinge"
    assert summary["reward"] > summary["sft_reward"] + 0.5, summary
    assert summary["win_rate_vs_sft"] >= 0.75, summary
