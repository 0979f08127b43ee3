"""LoRA: the reference is the policy with its adapter disabled (no second copy); export merges."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from runs import run_cli, tiny_run_args

LORA = ["--model.policy.lora.r", "8", "--model.policy.lora.alpha", "16",
        "--trainer.callbacks+=rlhf_lightning.callbacks.ExportPolicy"]


def test_lora_run_learns_with_adapter_disabled_reference_and_merged_export(tiny_model, tiny_data, tmp_path):
    cli = run_cli(tiny_run_args(tiny_model, tiny_data, tmp_path, batches=8, lr=1e-2, extra=LORA))
    module = cli.model
    assert module.reference is None  # no second copy of the weights
    trainable = {n for n, p in module.policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["reward"] > summary["sft_reward"] + 0.3

    # the disabled adapter gives the original model: the reference is unchanged by training
    original = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    ids = torch.tensor([[4, 5, 6, 7, 8]])
    module.policy.eval()
    with torch.no_grad(), module._reference_model() as reference:
        torch.testing.assert_close(reference(ids).logits, original(ids).logits)
    with torch.no_grad():
        trained_logits = module.policy(ids).logits
    assert not torch.allclose(trained_logits, original(ids).logits)

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "policy").eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, trained_logits, rtol=1e-4, atol=1e-4)


def test_an_adapter_export_loads_from_any_directory(tiny_model, tiny_data, tmp_path, monkeypatch):
    """The adapter-only export records the base model as an absolute path, even when the recipe gave a
    relative one, so peft loads it from another working directory."""
    import shutil

    from peft import AutoPeftModelForCausalLM

    work = tmp_path / "work"
    shutil.copytree(tiny_model, work / "base")
    monkeypatch.chdir(work)
    args = tiny_run_args(Path("base"), tiny_data, tmp_path / "run", batches=2, lr=1e-2,
                         extra=LORA + ["--trainer.callbacks.merge_lora", "false"])
    cli = run_cli(args)
    export = tmp_path / "run" / "policy"
    saved = json.loads((export / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str((work / "base").resolve())
    assert not (export / "model.safetensors").exists()  # the adapter only
    monkeypatch.chdir(tmp_path)
    loaded = AutoPeftModelForCausalLM.from_pretrained(export).eval()
    ids = torch.tensor([[4, 5, 6, 7, 8]])
    cli.model.policy.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, cli.model.policy(ids).logits, rtol=1e-5, atol=1e-5)
