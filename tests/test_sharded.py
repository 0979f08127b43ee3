"""Two CPU processes (gloo) under each sharded strategy (FSDP2, DeepSpeed ZeRO-2 and ZeRO-3): the same
training as DDP and as one process, sharded checkpoints that resume exactly, and an export gathered to one
Hugging Face directory.

Online objectives sample with each rank's own random stream, so a two-process run draws other samples than
a one-process run: they are compared with DDP on two processes (the same samples, unsharded weights).
Offline DPO sees the same rows either way and is compared with one process. Tolerances: losses 1e-5
absolute, weight digests 1e-4 relative (the sharded reduce-scatter sums in another order than DDP's
all-reduce). ZeRO-3 runs with ``param_persistence_threshold: 0``, so that even the tiny model's weights are
partitioned (DeepSpeed keeps small tensors whole by default).
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
STRATEGIES = {
    "fsdp": ["--trainer.strategy", "fsdp"],
    "zero2": ["--trainer.strategy", "deepspeed_stage_2"],
    "zero3": ["--trainer.strategy", "rlhf_lightning.distributed.deepspeed.ZeroStrategy", "--trainer.strategy.stage", "3",
              "--trainer.strategy.param_persistence_threshold", "0"],
}
ONLINE = {
    # REBEL with a small max_grad_norm, so that clipping acts and must use the norm over all shards, and two
    # micro-batches per step, whose gradients must add up
    "rebel": (["--model.objective", "rlhf_lightning.objectives.REBEL", "--model.objective.inner_epochs", "2",
               "--model.max_grad_norm", "0.05", "--model.micro_batch_size", "4"], []),
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
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
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
    options = [*STRATEGIES.get(strategy, ["--trainer.strategy", strategy]), "--trainer.devices", str(devices),
               "--data.batch_size", str(8 // devices),
               # sharded weights always sample with `generate` (every rank steps together); DDP and one
               # process must use the same engine for the runs to be comparable token for token
               "--rollout.generator", "rlhf_lightning.generation.HFGenerator",
               "--rollout.generator.drop_ended_rows", "false",
               *ON_CPU, *EXPORT, *extra]
    if "critic" in needs:
        options += ["--model.critic.path", str(tiny_model)]
    if name.endswith("lora"):  # also the adapter alone
        options += ["--trainer.callbacks+=rlhf_lightning.callbacks.ExportPolicy", "--trainer.callbacks.dirpath",
                    str(root / "adapter"), "--trainer.callbacks.merge_lora", "false"]
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


def assert_sharded(record: dict, strategy: str) -> None:
    expected = {"fsdp": "FSDP2Strategy", "zero2": "ZeroStrategy", "zero3": "ZeroStrategy"}[strategy]
    assert record["strategy"] == expected and record["world_size"] == 2
    assert record["sharded"] == (strategy == "fsdp")
    assert record["zero_partitioned"] == (strategy == "zero3")
    if strategy == "zero3":
        assert record["local_numel"] == 0  # every weight partitioned away between steps
    if strategy in ("fsdp", "zero3"):  # the frozen reference and the critic too
        assert all(record["others_sharded"]), record["others_sharded"]


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("name", list(ONLINE))
def test_sharded_training_equals_ddp(runs, name, strategy):
    """Same losses, same weights; every rank sees the same full weights; the export is the gathered weights."""
    sharded, sharded_root = runs(name, strategy, 2)
    ddp, ddp_root = runs(name, "ddp", 2)
    assert_sharded(sharded["rank0"], strategy)
    assert sharded["rank0"]["digest"] == sharded["rank1"]["digest"]
    assert_same_run(sharded["rank0"], ddp["rank0"])
    if name.endswith("lora"):  # merged on the shards, gathered: DDP's in-place merge (up to fp32 rounding)
        ddp_export = AutoModelForCausalLM.from_pretrained(ddp_root / "policy").state_dict()
        assert_export_equals(sharded_root / "policy", {k: v.float() for k, v in ddp_export.items()}, atol=1e-6)
        sharded_adapter, ddp_adapter = (load_file(root / "adapter" / "adapter_model.safetensors")
                                        for root in (sharded_root, ddp_root))
        assert sharded_adapter.keys() == ddp_adapter.keys() and all("lora_" in key for key in sharded_adapter)
        for key, value in ddp_adapter.items():
            torch.testing.assert_close(sharded_adapter[key], value, rtol=0, atol=1e-6, msg=key)
    else:
        assert_export_equals(sharded_root / "policy", load_file(sharded_root / "weights.safetensors"))


SLOW = pytest.mark.slow
RESUMED = [("fsdp", "rebel"), pytest.param("fsdp", "ppo", marks=SLOW), ("zero2", "rebel"), ("zero3", "rebel"),
           pytest.param("zero3", "ppo", marks=SLOW)]


@pytest.mark.parametrize("strategy, name", RESUMED)
def test_sharded_resume_matches_uninterrupted_run(runs, tiny_model, tiny_data, tmp_path, strategy, name):
    """Crash at the start of rollout batch 2 of 3 and resume from the sharded checkpoint: the same run."""
    full, _ = runs(name, strategy, 2)
    args = online_args(tiny_model, tiny_data, tmp_path, name, strategy, 2, extra=checkpointing(tmp_path))
    launch(tmp_path / "crashed", args, crash_at=2)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_dir()
    shards = list(last.glob("*.distcp")) if strategy == "fsdp" else list(last.glob("checkpoint/*optim_states.pt"))
    assert len(shards) == 2  # one file per rank
    assert not list((tmp_path / "checkpoints").glob("*.partial"))
    resumed = launch(tmp_path / "resumed", args, ckpt=str(last))
    assert resumed["rank0"]["global_step"] == full["rank0"]["global_step"]
    tail = {**full["rank0"], "losses": full["rank0"]["losses"][-len(resumed["rank0"]["losses"]):]}
    assert_same_run(resumed["rank0"], tail)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_sharded_dpo_equals_one_process(tiny_model, tmp_path, strategy):
    files = offline_files(tmp_path / "data")
    objective = ["--model.objective", "rlhf_lightning.objectives.DPO", "--model.objective.beta", "0.1"]

    def run(options: list[str], devices: int) -> dict:
        root = tmp_path / f"run_{devices}"
        args = offline_args(tiny_model, files, root, objective, batches=3, batch_size=4 // devices, evaluate=False,
                            extra=[*options, "--trainer.devices", str(devices), *ON_CPU])
        return launch(root, args)

    sharded, single = run(STRATEGIES[strategy], 2), run(["--trainer.strategy", "auto"], 1)
    assert_sharded(sharded["rank0"], strategy)
    assert_same_run(sharded["rank0"], single["rank0"])


def evaluate(recipe: Path, args: list[str], *extra: str) -> dict:
    """``rlhf-lightning evaluate`` in a subprocess (Lightning starts the second rank); its summary."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    evaluation = ["--trainer.callbacks+=rlhf_lightning.callbacks.WinRateEvaluation",
                  "--trainer.callbacks.max_new_tokens", "6"]
    command = [sys.executable, "-m", "rlhf_lightning.cli", "evaluate", str(recipe), *args[1:], *evaluation, *extra]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    (summary,) = Path(dict(zip(extra, extra[1:]))["--trainer.default_root_dir"]).glob("evaluation/*/summary.json")
    return json.loads(summary.read_text())


def test_evaluate_a_sharded_checkpoint_as_its_exported_policy(tiny_model, tiny_data, tmp_path, strategy="fsdp"):
    """``evaluate`` loads an FSDP checkpoint under its strategy: the same greedy evaluation as the gathered
    export evaluated by one process."""
    args = online_args(tiny_model, tiny_data, tmp_path, "rebel", strategy, 2, extra=checkpointing(tmp_path))
    launch(tmp_path / "run", args)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_dir()  # a sharded checkpoint: a folder of shards
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("seed_everything: 0\n")
    sharded = evaluate(recipe, args, "--ckpt_path", "last", "--trainer.default_root_dir", str(tmp_path))
    single = evaluate(recipe, args, "--policy_dir", str(tmp_path / "policy"), "--trainer.strategy", "auto",
                      "--trainer.devices", "1", "--trainer.default_root_dir", str(tmp_path / "single"))
    assert sharded["eval_prompts"] == single["eval_prompts"] == 16
    for key in ("win_rate_vs_sft", "reward", "sft_reward", "win_rate_vs_reference"):
        assert sharded[key] == single[key], key
    assert sharded["rollout_batches"] == 3


def test_evaluate_refuses_a_deepspeed_checkpoint_in_one_message(tiny_model, tiny_data, tmp_path, capsys):
    from rlhf_lightning.cli import main

    (tmp_path / "checkpoints" / "last.ckpt").mkdir(parents=True)  # a ZeRO checkpoint is a folder
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("seed_everything: 0\n")
    args = online_args(tiny_model, tiny_data, tmp_path, "rebel", "zero3", 1)
    evaluation = ["--trainer.callbacks+=rlhf_lightning.callbacks.WinRateEvaluation"]
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", str(recipe), *args[1:], *evaluation, "--ckpt_path", "last"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert "ckpt_path: evaluate cannot load a DeepSpeed checkpoint" in err and "--policy_dir" in err
