"""Two CPU processes (gloo) under FSDP2 (``strategy: fsdp``): the same training as DDP and as one process,
sharded checkpoints that resume exactly, and an export gathered to one Hugging Face directory.

Online objectives sample with each rank's own random stream, so a two-process run draws other samples than
a one-process run: they are compared with DDP on two processes (the same samples, unsharded weights).
Offline DPO sees the same rows either way and is compared with one process. Tolerances: losses 1e-5
absolute, weight digests 1e-4 relative (the sharded reduce-scatter sums in another order than DDP's
all-reduce; on this CPU both come out bit-identical).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from runs import tiny_run_args, without_evaluation
from test_offline_end_to_end import offline_args, offline_files

TESTS = Path(__file__).parent
ON_CPU = ["--trainer.accelerator", "cpu"]
EXPORT = ["--trainer.callbacks+=rlhf_lightning.callbacks.ExportPolicy"]
ONLINE = {
    # REBEL with a small max_grad_norm, so that clipping acts and must use the norm over all shards
    "rebel": (["--model.objective", "rlhf_lightning.objectives.REBEL", "--model.objective.inner_epochs", "2",
               "--model.max_grad_norm", "0.05"], []),
    "ppo": (["--model.objective", "rlhf_lightning.objectives.PPO", "--model.objective.inner_epochs", "2"], ["critic"]),
    "rebel_lora": (["--model.objective", "rlhf_lightning.objectives.REBEL", "--model.policy.lora.r", "4",
                    "--model.policy.lora.alpha", "8"], []),
}


def checkpointing(root: Path) -> list[str]:
    return ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            "--trainer.callbacks.dirpath", str(root / "checkpoints"), "--trainer.callbacks.save_last", "true",
            "--trainer.callbacks.save_top_k", "0", "--trainer.callbacks.every_n_train_steps", "1"]


def launch(out: Path, args: list[str], crash_at: int = -1, ckpt: str = "-") -> dict:
    """Run ``tests/distributed_run.py`` (Lightning starts the second rank); each rank's record."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, str(TESTS / "distributed_run.py"), str(out), str(crash_at), ckpt, *args],
                            env=env, capture_output=True, text=True, timeout=600)
    if crash_at < 0:
        assert result.returncode == 0, result.stderr[-4000:]
    else:
        assert "simulated crash" in result.stderr, result.stderr[-4000:]
    return {path.stem: json.loads(path.read_text()) for path in sorted(out.glob("rank*.json"))}


def online_args(tiny_model, tiny_data, root: Path, name: str, strategy: str, devices: int, extra=()) -> list[str]:
    objective, needs = ONLINE[name]
    options = ["--trainer.strategy", strategy, "--trainer.devices", str(devices), "--data.batch_size", str(8 // devices),
               *ON_CPU, *EXPORT, *extra]
    if "critic" in needs:
        options += ["--model.critic.path", str(tiny_model)]
    return without_evaluation(tiny_run_args(tiny_model, tiny_data, root, batches=3, objective=objective, extra=options))


def losses(record: dict) -> list[float]:
    return [value for step in record["losses"] for _, value in sorted(step.items())]


def assert_same_run(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert len(a["losses"]) == len(b["losses"]) > 0
    torch.testing.assert_close(torch.tensor(losses(a)), torch.tensor(losses(b)), rtol=0, atol=atol)
    assert a["digest"].keys() == b["digest"].keys()
    for key in a["digest"]:
        torch.testing.assert_close(torch.tensor(a["digest"][key]), torch.tensor(b["digest"][key]), rtol=1e-4,
                                   atol=1e-5, msg=key)


def assert_export_equals(directory: Path, weights: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    exported = AutoModelForCausalLM.from_pretrained(directory).state_dict()
    for key, value in weights.items():
        torch.testing.assert_close(exported[key].float(), value, rtol=0, atol=atol, msg=key)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model, tiny_data):
    """Runs shared by the tests below, made on first use: ``runs(name, strategy, devices)`` → (records, folder)."""
    done: dict = {}
    base = tmp_path_factory.mktemp("sharded")

    def get(name: str, strategy: str, devices: int):
        key = (name, strategy, devices)
        if key not in done:
            root = base / f"{name}_{strategy}_{devices}"
            done[key] = (launch(root, online_args(tiny_model, tiny_data, root, name, strategy, devices)), root)
        return done[key]
    return get


@pytest.mark.parametrize("name", list(ONLINE))
def test_fsdp_trains_as_ddp_does(runs, name):
    """Same losses, same weights; every rank sees the same full weights; the export is the gathered weights."""
    fsdp, fsdp_root = runs(name, "fsdp", 2)
    ddp, ddp_root = runs(name, "ddp", 2)
    assert fsdp["rank0"]["sharded"] and fsdp["rank0"]["strategy"] == "FSDP2Strategy"
    assert not ddp["rank0"]["sharded"]
    assert fsdp["rank0"]["digest"] == fsdp["rank1"]["digest"]
    assert_same_run(fsdp["rank0"], ddp["rank0"])
    if name.endswith("lora"):  # merged on the shards, gathered: DDP's in-place merge (up to fp32 rounding)
        ddp_export = AutoModelForCausalLM.from_pretrained(ddp_root / "policy").state_dict()
        assert_export_equals(fsdp_root / "policy", {k: v.float() for k, v in ddp_export.items()}, atol=1e-6)
    else:
        assert_export_equals(fsdp_root / "policy", load_file(fsdp_root / "weights.safetensors"))


@pytest.mark.parametrize("name", ["rebel", "ppo"])
def test_fsdp_resume_matches_uninterrupted_run(runs, tiny_model, tiny_data, tmp_path, name):
    """Crash at the start of rollout batch 2 of 3 and resume from the sharded checkpoint: the same run."""
    full, _ = runs(name, "fsdp", 2)
    args = online_args(tiny_model, tiny_data, tmp_path, name, "fsdp", 2, extra=checkpointing(tmp_path))
    launch(tmp_path / "crashed", args, crash_at=2)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_dir() and len(list(last.glob("*.distcp"))) == 2  # one shard file per rank
    assert not list((tmp_path / "checkpoints").glob("*.partial"))
    resumed = launch(tmp_path / "resumed", args, ckpt=str(last))
    assert resumed["rank0"]["global_step"] == full["rank0"]["global_step"]
    tail = {**full["rank0"], "losses": full["rank0"]["losses"][-len(resumed["rank0"]["losses"]):]}
    assert_same_run(resumed["rank0"], tail)


def test_fsdp_dpo_matches_one_process(tiny_model, tmp_path):
    files = offline_files(tmp_path / "data")
    objective = ["--model.objective", "rlhf_lightning.objectives.DPO", "--model.objective.beta", "0.1"]

    def run(strategy: str, devices: int) -> dict:
        root = tmp_path / f"{strategy}_{devices}"
        args = offline_args(tiny_model, files, root, objective, batches=3, batch_size=4 // devices, evaluate=False,
                            extra=["--trainer.strategy", strategy, "--trainer.devices", str(devices), *ON_CPU])
        return launch(root, args)

    sharded, single = run("fsdp", 2), run("auto", 1)
    assert sharded["rank0"]["sharded"] and not single["rank0"]["sharded"]
    assert_same_run(sharded["rank0"], single["rank0"])
