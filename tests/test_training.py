"""End-to-end REBEL runs on the tiny model: learning, resume exactness, data order, export, summary."""

from __future__ import annotations

import json
import os

import pytest
import torch
from lightning.pytorch import Callback
from transformers import AutoModelForCausalLM

from rlhf_lightning.data.base import ResumableShuffleSampler
from runs import REBEL_ARGS, fit_with_callbacks, run_cli, tiny_run_args


def test_rebel_learns_the_reward(tiny_model, tiny_data, tmp_path):
    """The 'good'-word reward starts near 0 for the random model; REBEL drives it up."""
    cli = run_cli(tiny_run_args(tiny_model, tiny_data, tmp_path, batches=8))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["objective"] == "rebel"
    assert summary["sft_reward"] < 0.3
    assert summary["reward"] > summary["sft_reward"] + 0.5
    assert summary["win_rate_vs_sft"] >= 0.75
    for key in ("win_rate_vs_sft", "win_rate_vs_reference", "reward", "kl", "train_seconds", "samples_per_second"):
        assert key in summary and isinstance(summary[key], float), key
    assert torch.isfinite(torch.tensor(summary["kl"]))
    assert cli.trainer.global_step == 8 * 2  # batches × inner_epochs (one minibatch)


class CrashAt(Callback):
    """Simulate a crash at the start of rollout batch ``index``."""

    def __init__(self, index: int) -> None:
        self.index = index

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.index:
            raise RuntimeError("simulated crash")


class RecordPrompts(Callback):
    def __init__(self) -> None:
        self.prompts: list[list[str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.prompts.append(list(batch["prompt"]))


def _checkpointing(root) -> list[str]:
    return ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            "--trainer.callbacks.dirpath", str(root / "checkpoints"), "--trainer.callbacks.save_last", "true",
            "--trainer.callbacks.save_top_k", "0", "--trainer.callbacks.every_n_train_steps", "2"]


def _policy_state(cli) -> dict:
    return {k: v.detach().clone() for k, v in cli.model.policy.state_dict().items()}


RESUMED_RUNS = {  # name → (objective options, other options, optimizer updates per rollout batch)
    # REBEL, 2 inner epochs: ln π_t from the rollout's own no-grad pass
    "rebel": (REBEL_ARGS, (), 2),
    # RLOO (1 update per batch: ln π_t from the update's forward) with the adaptive KL controller,
    # whose γ must also continue where it stopped
    "rloo_adaptive_kl": (("--model.objective", "rlhf_lightning.objectives.RLOO"),
                         ("--rollout.target_kl", "0.01", "--rollout.kl_horizon", "50"), 1),
    # LoRA: checkpoints hold the adapter (and the optimizer state) only; the frozen base reloads from its path
    "rebel_lora": (REBEL_ARGS, ("--model.policy.lora.r", "8", "--model.policy.lora.alpha", "16"), 2),
    # bf16 weights: the optimizer's fp32 master copies must continue where they stopped too
    "rebel_bf16_weights": (REBEL_ARGS, ("--model.policy.dtype", "bfloat16"), 2),
}


@pytest.mark.parametrize("name", list(RESUMED_RUNS))
def test_resume_matches_uninterrupted_run(tiny_model, tiny_data, tmp_path, name):
    """Crash after 3 of 6 rollout batches, resume with --ckpt_path last: same weights, same data, same RNG."""
    objective, options, updates_per_batch = RESUMED_RUNS[name]

    def args(root):
        run = tiny_run_args(tiny_model, tiny_data, root, batches=6, objective=objective, extra=_checkpointing(root))
        at = run.index("--trainer.callbacks+=rlhf_lightning.callbacks.WinRateEvaluation")
        return run[:at] + list(options) + run[at:]

    full_root, crash_root = tmp_path / "full", tmp_path / "crash"
    full = run_cli(args(full_root))

    crash_args = args(crash_root)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit_with_callbacks(crash_args, CrashAt(3))
    assert (crash_root / "checkpoints" / "last.ckpt").exists()

    resumed = run_cli(crash_args + ["--ckpt_path", str(crash_root / "checkpoints" / "last.ckpt")])
    steps = 6 * updates_per_batch
    assert resumed.trainer.global_step == full.trainer.global_step == steps
    full_state, resumed_state = _policy_state(full), _policy_state(resumed)
    for key in full_state:
        torch.testing.assert_close(resumed_state[key], full_state[key], rtol=0, atol=1e-6, msg=key)
    def optimizer_state(cli) -> dict:
        state = cli.trainer.optimizers[0].state_dict()
        return state["inner"]["state"] if "inner" in state else state["state"]  # MasterWeightAdamW keeps its own

    full_opt, resumed_opt = optimizer_state(full), optimizer_state(resumed)
    torch.testing.assert_close(resumed_opt[0]["exp_avg"], full_opt[0]["exp_avg"], rtol=0, atol=1e-6)
    assert resumed.trainer.lr_scheduler_configs[0].scheduler.last_epoch == steps
    full_gamma, resumed_gamma = (next(c for c in cli.trainer.callbacks if type(c).__name__ == "Rollout").kl_coef
                                 for cli in (full, resumed))
    assert resumed_gamma == pytest.approx(full_gamma, rel=1e-9)
    if name == "rloo_adaptive_kl":
        assert full_gamma != pytest.approx(0.05)  # the controller moved γ
    if name == "rebel_bf16_weights":
        full_masters, resumed_masters = (cli.trainer.optimizers[0].masters[0] for cli in (full, resumed))
        for a, b in zip(full_masters, resumed_masters):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    if name == "rebel_lora":  # the checkpoint stores the adapter only: the frozen base reloads from its path
        stored = torch.load(crash_root / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        assert stored and all("lora_" in key for key in stored), sorted(stored)[:5]


def test_checkpoint_skips_frozen_reference_and_loads_weights_only(tiny_model, tiny_data, tmp_path):
    run_cli(tiny_run_args(tiny_model, tiny_data, tmp_path, batches=2, extra=_checkpointing(tmp_path)))
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert not any(k.startswith("reference.") for k in checkpoint["state_dict"])
    assert any(k.startswith("policy.") for k in checkpoint["state_dict"])


def test_prompt_order_is_seeded_and_covers_each_epoch(tiny_model, tiny_data, tmp_path):
    """Two epochs of 8 batches × 8 prompts over 64 prompts: each epoch is a new permutation of all rows."""
    args = tiny_run_args(tiny_model, tiny_data, tmp_path, batches=8)
    args[args.index("--trainer.max_epochs") + 1] = "2"
    recorder = RecordPrompts()
    cli = fit_with_callbacks(args, recorder)
    assert len(recorder.prompts) == 16
    sampler = cli.datamodule.train_dataloader().sampler
    orders = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(64))
    assert orders[0] != orders[1]
    rows = cli.datamodule.splits["train"]
    for epoch in range(2):
        seen = [p for batch in recorder.prompts[epoch * 8:(epoch + 1) * 8] for p in batch]
        assert seen == [rows[i]["prompt"] for i in orders[epoch]]


def test_sampler_shards_ranks_disjointly_and_resumes():
    samplers = [ResumableShuffleSampler(10, seed=3, rank=r, world_size=3) for r in range(3)]
    shards = [list(s) for s in samplers]
    assert all(len(shard) == 3 for shard in shards)
    assert len(set(sum(shards, []))) == 9
    samplers[0].resume_at(0, 2)
    assert list(samplers[0]) == shards[0][2:]
    assert list(samplers[0]) == shards[0]  # a resume applies to one pass only


def test_export_loads_with_from_pretrained(tiny_model, tiny_data, tmp_path):
    umask = os.umask(0o022)  # the usual one: new files 0644
    try:
        cli = run_cli(tiny_run_args(tiny_model, tiny_data, tmp_path, batches=2,
                                    extra=["--trainer.callbacks+=rlhf_lightning.callbacks.ExportPolicy"]))
    finally:
        os.umask(umask)
    exported = tmp_path / "policy"
    assert (exported / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(exported).eval()
    ids = torch.tensor([[4, 5, 6, 7]])
    policy = cli.model.policy.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, policy(ids).logits)
    assert json.loads((tmp_path / "summary.json").read_text())["policy_dir"] == str(exported)
    # readable by the user's group, as any file they write (the temp-file writers create 0600 files)
    written = [*exported.iterdir(), *tmp_path.rglob("*.ckpt")]
    assert any(path.suffix == ".ckpt" for path in written)
    assert {path.name: oct(path.stat().st_mode & 0o777) for path in written} == {path.name: "0o644" for path in written}


def test_resumed_run_keeps_the_whole_runs_bookkeeping(tiny_model, tiny_data, tmp_path, recwarn):
    """After a crash and --ckpt_path last, summary.json counts the whole run, the evaluation history keeps the
    evaluations from before the crash, the summary says where the run came from, and Lightning's
    'not resumable' warning (wrong for these data modules) is not shown."""
    def args(root):
        # the evaluation's option first: --trainer.callbacks.<key> sets the callback added last
        extra = ["--trainer.callbacks.every_n_rollouts", "2", *_checkpointing(root)]
        return tiny_run_args(tiny_model, tiny_data, root, batches=6, extra=extra) + [
            "--data.validation_file", str(tiny_data["validation"])]

    full = run_cli(args(tmp_path / "full"))
    crash_root = tmp_path / "crash"
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit_with_callbacks(args(crash_root), CrashAt(3))
    before = torch.load(crash_root / "checkpoints" / "last.ckpt", weights_only=True)["run_counters"]["train_seconds"]
    run_cli(args(crash_root) + ["--ckpt_path", str(crash_root / "checkpoints" / "last.ckpt")])
    full_summary, resumed_summary = (json.loads((root / "summary.json").read_text())
                                     for root in (tmp_path / "full", crash_root))
    assert 0 < before < resumed_summary["train_seconds"]  # the time before the crash counts
    assert resumed_summary["rollout_batches"] == full_summary["rollout_batches"] == 6
    assert resumed_summary["samples_generated"] == full_summary["samples_generated"]
    full_history, resumed_history = (json.loads((root / "eval_history.json").read_text())
                                     for root in (tmp_path / "full", crash_root))
    assert [(h["rollouts"], h["split"]) for h in resumed_history] == [(h["rollouts"], h["split"]) for h in full_history]
    assert [h["rollouts"] for h in resumed_history][:1] == [2]  # from before the crash
    assert resumed_summary["seed"] == 0 and resumed_summary["rlhf_lightning_version"]
    assert len(resumed_summary["config_sha256"]) == 64
    assert not [w for w in recwarn if "resuming from a checkpoint that ended before" in str(w.message)]
    assert full.trainer.global_step == 12
