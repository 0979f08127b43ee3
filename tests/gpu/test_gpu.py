"""Checks that need a CUDA GPU (``make test-gpu``; deselected from ``make test``, skipped without CUDA).

QLoRA (4-bit NF4 base + LoRA) training steps, bf16 training on one GPU under FSDP2 and DeepSpeed ZeRO-2/3
against the plain single-device run, and a generation throughput figure (printed, and written to
``$RLHF_GPU_RESULTS`` when set).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from runs import run_cli, tiny_run_args, without_evaluation

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make test-gpu)")]

ON_GPU = ["--trainer.accelerator", "gpu", "--trainer.devices", "1"]
STRATEGIES = {
    "single": ["--trainer.strategy", "auto"],
    "fsdp": ["--trainer.strategy", "fsdp"],
    "zero2": ["--trainer.strategy", "deepspeed_stage_2"],
    "zero3": ["--trainer.strategy", "deepspeed_stage_3"],
}


def record(name: str, value) -> None:
    print(f"[gpu] {name}: {value}")
    target = os.environ.get("RLHF_GPU_RESULTS")
    if target:
        path = Path(target)
        results = json.loads(path.read_text()) if path.exists() else {}
        results[name] = value
        path.write_text(json.dumps(results, indent=2))


@pytest.fixture(scope="module")
def gpu_model(tmp_path_factory) -> Path:
    """A 4-layer Llama wide enough for 4-bit blocks (bitsandbytes quantises blocks of 64 weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiny import make_tokenizer

    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64, pad_token_id=0,
                         eos_token_id=1, bos_token_id=None)
    path = tmp_path_factory.mktemp("gpu") / "model"
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_qlora_trains(gpu_model, tiny_data, tmp_path):
    cli = run_cli(without_evaluation(tiny_run_args(
        gpu_model, tiny_data, tmp_path, batches=4,
        extra=[*ON_GPU, "--model.policy.load_in_4bit", "true", "--model.policy.lora.r", "8",
               "--model.policy.lora.alpha", "16", "--trainer.precision", "bf16-mixed"])))
    policy = cli.model.policy
    assert any(type(p).__name__ == "Params4bit" for p in policy.parameters())  # the base stays 4-bit
    adapters = [p for n, p in policy.named_parameters() if "lora_B" in n]
    assert adapters and any(float(p.abs().sum()) > 0 for p in adapters)  # lora_B starts at 0: it was trained
    rewards = [float(v) for k, v in cli.trainer.logged_metrics.items() if k == "reward/raw"]
    assert all(torch.isfinite(torch.tensor(rewards)))
    record("qlora_steps", cli.trainer.global_step)


def _bf16_run(gpu_model, tiny_data, root, strategy: str):
    return run_cli(without_evaluation(tiny_run_args(
        gpu_model, tiny_data, root, batches=4,
        extra=[*ON_GPU, *STRATEGIES[strategy], "--trainer.precision", "bf16-mixed"])))


@pytest.mark.parametrize("strategy", ["fsdp", "zero2", "zero3"])
def test_bf16_sharded_strategy_on_one_gpu(gpu_model, tiny_data, tmp_path, strategy):
    """Same recipe, one GPU: the sharded strategy's losses stay within bf16 noise of the plain run's."""
    single = _bf16_run(gpu_model, tiny_data, tmp_path / "single", "single")
    sharded = _bf16_run(gpu_model, tiny_data, tmp_path / strategy, strategy)
    a, b = (float(cli.trainer.logged_metrics["loss/rebel"]) for cli in (single, sharded))
    record(f"bf16_{strategy}_last_loss", [a, b])
    assert abs(a - b) <= 0.05 * max(abs(a), 1e-3) + 1e-3


def test_generation_throughput(gpu_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf_lightning.generation import HFGenerator, SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(gpu_model)
    model = AutoModelForCausalLM.from_pretrained(gpu_model, dtype=torch.bfloat16).cuda()
    engine = HFGenerator()
    engine.setup(tokenizer, model)
    ids = torch.full((64, 16), 5, device="cuda")
    params = SamplingParams(max_new_tokens=32, min_new_tokens=32)
    engine.generate(model, ids, torch.ones_like(ids), params)  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = engine.generate(model, ids, torch.ones_like(ids), params)
    torch.cuda.synchronize()
    tokens = int(out.response_mask.sum())
    record("generation_tokens_per_second", round(tokens / (time.perf_counter() - start), 1))
    assert tokens == 64 * 32
