"""Image runs by recipe, recorded by ``tests/distributed_run.py``: a run that crashes and resumes from its last
checkpoint ends with the uninterrupted run's weights and losses (the prompt order, the noise, the per-prompt
reward statistics and the optimizer all resume); under DDP on two CPU processes both ranks end with the same
weights (gradients are averaged), from disjoint prompts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from rlhf_lightning.tasks.images.build import build_image_task, scorer_dir  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    build_image_task(root, unet_steps=40, scorer_steps=40, progress=False)
    return root


def args(task: Path, root: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(REPO / "recipes" / "images" / "rebel.yaml"), "--trainer.logger", "false",
            "--cpu_threads", "1", "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(root),
            "--trainer.limit_train_batches", "4", "--data.init_args.root", str(task),
            "--data.init_args.unet_steps", "40", "--data.init_args.scorer_steps", "40",
            "--data.init_args.repeats", "8", "--data.init_args.batch_size", "4",
            "--model.init_args.policy.path", str(task / "pipeline"),
            "--model.init_args.reward.init_args.path", str(scorer_dir(task)),
            "--rollout.init_args.min_count", "2",  # the per-prompt statistics take over after a few batches
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            "--trainer.callbacks.dirpath", str(root / "checkpoints"), "--trainer.callbacks.save_last", "true",
            "--trainer.callbacks.save_top_k", "0", "--trainer.callbacks.every_n_train_steps", "1", *extra]


def launch(out: Path, cli_args: list[str], crash_at: int = -1, ckpt: str = "-") -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(TESTS / "distributed_run.py"), str(out), str(crash_at), ckpt,
                             *cli_args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if crash_at < 0:
        assert result.returncode == 0, result.stderr[-4000:]
    else:
        assert "simulated crash" in result.stderr, result.stderr[-4000:]
    return {path.stem: json.loads(path.read_text()) for path in sorted(out.glob("rank*.json"))}


def digest(record: dict) -> torch.Tensor:
    return torch.tensor([value for _, values in sorted(record["digest"].items()) for value in values])


def test_a_crashed_image_run_resumes_exactly(task, tmp_path):
    whole = launch(tmp_path / "whole", args(task, tmp_path / "whole_run"))["rank0"]
    crashed = tmp_path / "crashed_run"
    launch(tmp_path / "crashed", args(task, crashed), crash_at=2)
    resumed = launch(tmp_path / "resumed", args(task, crashed), ckpt=str(crashed / "checkpoints" / "last.ckpt"))["rank0"]
    assert resumed["global_step"] == whole["global_step"] == 8  # 4 batches × 2 minibatches
    torch.testing.assert_close(torch.tensor([list(s.values()) for s in resumed["losses"]]),
                               torch.tensor([list(s.values()) for s in whole["losses"][2:]]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(digest(resumed), digest(whole), rtol=1e-5, atol=1e-6)


def test_ddp_ranks_end_with_the_same_weights(task, tmp_path):
    records = launch(tmp_path / "ddp", args(task, tmp_path / "ddp_run", "--trainer.strategy", "ddp",
                                            "--trainer.devices", "2", "--data.init_args.batch_size", "2"))
    assert set(records) == {"rank0", "rank1"} and records["rank0"]["world_size"] == 2
    torch.testing.assert_close(digest(records["rank0"]), digest(records["rank1"]), rtol=0, atol=0)
    single = launch(tmp_path / "single", args(task, tmp_path / "single_run"))["rank0"]
    assert not torch.equal(digest(records["rank0"]), digest(single))  # trained (and on other samples)
