"""Two CPU processes under DDP: the module, the critic and the group statistics must work with several ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runs import tiny_run_args

TESTS = Path(__file__).parent
OBJECTIVES = {
    "rebel": ["--model.objective", "rlhf_lightning.objectives.REBEL", "--model.objective.inner_epochs", "2"],
    "ppo": ["--model.objective", "rlhf_lightning.objectives.PPO", "--model.objective.inner_epochs", "2"],
    "grpo": ["--model.objective", "rlhf_lightning.objectives.GRPO", "--model.objective.group_size", "4", "--rollout.kl_coef", "0"],
}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_two_process_ddp_run(name, tiny_model, tiny_data, tmp_path):
    extra = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    if name == "ppo":
        extra += ["--model.critic.path", str(tiny_model)]
    args = tiny_run_args(tiny_model, tiny_data, tmp_path, batches=3, objective=OBJECTIVES[name], extra=extra)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "rlhf_lightning.cli", *args], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["objective"] == name
    assert summary["eval_prompts"] == 16  # gathered from both ranks
    metrics = (tmp_path / "lightning_logs").rglob("metrics.csv")
    assert list(metrics)
