"""Per-GPU memory of policy + reference + critic + optimizer + activations under DDP, FSDP2, ZeRO-2 and ZeRO-3.

A model of what this library keeps on each GPU, term by term (bytes per parameter as the strategies store
them here), for Pythia-1.4B/2.8B/6.9B and Llama-3-8B on 8 GPUs of 80 GB, full fine-tuning and LoRA::

    python benchmarks/memory.py              # the table (parameter counts from configs built on the meta device)
    python benchmarks/memory.py --measure    # also: check the model against 2-process CPU runs of a small Llama

Results: ``<out>/memory.md`` and ``<out>/memory.json``. No download: the configs are written here with the
checkpoints' published shapes, and parameters are counted on the meta device.

What each strategy stores per GPU (``P`` policy parameters, ``A`` LoRA adapter parameters, ``T`` trained
parameters = ``P`` or ``A``, ``N`` GPUs, ``w`` bytes of the loaded dtype, 2 for bf16):

| term | DDP | FSDP2 (``fsdp``) | ZeRO-2 | ZeRO-3 |
|---|---|---|---|---|
| policy weights | ``wP`` | full: ``4P/N`` (fp32 master shards); LoRA: ``(wP + 4A)/N`` | ``w(P+A)`` | ``w(P+A)/N`` |
| optimizer (AdamW m, v; masters) | full bf16: ``12T``; LoRA: ``8A`` | ``8T/N`` | ``12T/N`` | ``12T/N`` |
| gradients (during the update) | ``2·wT`` (grads + DDP buckets) | ``4T/N`` + one unit | ``4T/N`` + bucket | ``4T/N`` + bucket |
| reference (full fine-tuning; LoRA: none) | ``wP`` | ``wP/N`` | ``wP`` | ``wP/N`` |
| gathered weights (transient) | – | 2 × largest unit in fp32 | – | 2 × largest unit |
| reduce bucket (allocated at start) | – | – | – | ``reduce_bucket_size × w`` (2e8 elements) |

The critic (PPO) is one more fully trained model of its size, by the same rules. Activations of the update
(one micro-batch, bf16): per layer ``rows × seq × (10H + 3·kv + 4I)`` elements for gated MLPs
(``(10H + 3·kv + 2I)`` otherwise), or only the layer input under gradient checkpointing (plus one layer
recomputed), and the response block's fp32 logits with their log-softmax. Generation runs without grad
and needs the KV cache instead; the peak takes the larger of the two.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

HERE = Path(__file__).parent
GIB = 2 ** 30
STRATEGIES = ("ddp", "fsdp", "zero2", "zero3")
ZERO3_REDUCE_BUCKET = 200_000_000  # elements: ZeroStrategy's reduce_bucket_size (Lightning's default)


@dataclass
class Shape:
    """What the memory model needs from a checkpoint's config."""

    name: str
    params: int           # P
    lora_params: int      # A (r = 16 on every linear layer of the blocks)
    largest_unit: int     # parameters of the largest FSDP unit (a block, or the root with embeddings and head)
    layers: int
    hidden: int
    intermediate: int
    kv_dim: int
    vocab: int
    gated: bool


def shape_of(name: str, config, lora_r: int = 16) -> Shape:
    """Count parameters on the meta device (no memory, no download)."""
    from transformers import AutoModelForCausalLM

    from rlhf_lightning.distributed.fsdp import transformer_blocks

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    blocks = transformer_blocks(model)
    block = sum(p.numel() for p in blocks[0].parameters())
    lora = sum(lora_r * (m.in_features + m.out_features) for b in blocks for m in b.modules()
               if isinstance(m, torch.nn.Linear))
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", heads) * (config.hidden_size // heads)
    return Shape(name=name, params=params, lora_params=lora, largest_unit=max(block, params - len(blocks) * block),
                 layers=config.num_hidden_layers, hidden=config.hidden_size, intermediate=config.intermediate_size,
                 kv_dim=kv, vocab=config.vocab_size, gated=hasattr(config, "mlp_bias") or "llama" in config.model_type)


def published_shapes() -> list[Shape]:
    from transformers import GPTNeoXConfig, LlamaConfig

    def pythia(hidden: int, layers: int, heads: int) -> GPTNeoXConfig:
        return GPTNeoXConfig(vocab_size=50304, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                             intermediate_size=4 * hidden, rotary_pct=0.25, tie_word_embeddings=False)

    llama3 = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False)
    return [shape_of("Pythia-1.4B", pythia(2048, 24, 16)), shape_of("Pythia-2.8B", pythia(2560, 32, 32)),
            shape_of("Pythia-6.9B", pythia(4096, 32, 32)), shape_of("Llama-3-8B", llama3)]


def model_states(shape: Shape, strategy: str, lora: bool, gpus: int, w: int = 2) -> dict[str, float]:
    """Bytes per GPU of the trained model's weights, optimizer state and (peak) gradients, and its reference."""
    P, A, N = shape.params, shape.lora_params, gpus
    T = A if lora else P
    weights = {"ddp": w * P + 4 * A * lora,
               "fsdp": ((w * P + 4 * A) if lora else 4 * P) / N,
               "zero2": w * (P + A * lora), "zero3": w * (P + A * lora) / N}[strategy]
    optimizer = {"ddp": 8 * A if lora else (12 if w < 4 else 8) * P, "fsdp": 8 * T / N,
                 "zero2": 12 * T / N, "zero3": 12 * T / N}[strategy]
    grads = {"ddp": 2 * (4 * A if lora else w * P), "fsdp": 4 * T / N, "zero2": 4 * T / N, "zero3": 4 * T / N}[strategy]
    reference = 0 if lora else {"ddp": w * P, "fsdp": w * P / N, "zero2": w * P, "zero3": w * P / N}[strategy]
    gathered = {"ddp": 0, "fsdp": 2 * 4 * shape.largest_unit, "zero2": 0, "zero3": 2 * w * shape.largest_unit}[strategy]
    buckets = ZERO3_REDUCE_BUCKET * w if strategy == "zero3" else 0  # allocated whole when the engine starts
    return {"weights": weights, "optimizer": optimizer, "gradients": grads, "reference": reference,
            "gathered": gathered, "buckets": buckets}


def activations(shape: Shape, rows: int, seq: int, response: int, checkpointing: bool, w: int = 2) -> float:
    """Bytes of the update's activations for one micro-batch (saved for backward)."""
    H, I, kv = shape.hidden, shape.intermediate, shape.kv_dim
    per_token = 10 * H + 3 * kv + (4 if shape.gated else 2) * I
    layers = rows * seq * (H * shape.layers + per_token) if checkpointing else rows * seq * per_token * shape.layers
    logits = 1.5 * rows * response * shape.vocab * 4  # fp32 log-softmax output (+ the head's output, sliced)
    return layers * w + logits


def kv_cache(shape: Shape, rows: int, seq: int, w: int = 2) -> float:
    return 2 * shape.layers * rows * seq * shape.kv_dim * w


def per_gpu(shape: Shape, strategy: str, lora: bool, gpus: int, critic: bool, rows: int, seq: int, response: int,
            generation_rows: int, checkpointing: bool = True) -> dict[str, float]:
    """The peak per GPU in GiB, term by term."""
    states = model_states(shape, strategy, lora, gpus)
    if critic:  # a fully trained value model of the same size
        critic_states = model_states(shape, strategy, False, gpus)
        states["critic_model"] = critic_states["weights"] + critic_states["optimizer"] + critic_states["gradients"]
    update = activations(shape, rows, seq, response, checkpointing)
    generation = kv_cache(shape, generation_rows, seq) + generation_rows * shape.vocab * 4
    states["activations"] = max(update, generation)
    result = {key: value / GIB for key, value in states.items()}
    result["total"] = sum(result.values())
    return result


# ---------------------------------------------------------------------------------------------- measure
def small_llama(root: Path) -> tuple[Path, object]:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from tiny import make_prompt_files, make_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer()
    config = LlamaConfig(vocab_size=2048, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64, pad_token_id=0,
                         eos_token_id=1, bos_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "data").mkdir(parents=True, exist_ok=True)
    make_prompt_files(root / "data")
    return root / "model", config


def measure(root: Path) -> list[dict]:
    """Bytes each rank keeps between steps (weights, optimizer state, reference), 2 CPU processes, fp32,
    against :func:`model_states` for the same shapes."""
    model, config = small_llama(root)
    shape = shape_of("measured Llama", config, lora_r=8)
    strategy_args = {"ddp": ["--trainer.strategy", "ddp"], "fsdp": ["--trainer.strategy", "fsdp"],
                     "zero2": ["--trainer.strategy", "deepspeed_stage_2"],
                     "zero3": ["--trainer.strategy", "rlhf_lightning.distributed.deepspeed.ZeroStrategy",
                               "--trainer.strategy.stage", "3", "--trainer.strategy.param_persistence_threshold", "0"]}
    rows = []
    for lora in (False, True):
        for strategy in STRATEGIES:
            out = root / f"{strategy}_{'lora' if lora else 'full'}"
            args = ["--seed_everything", "0", "--model", "rlhf_lightning.RLHFModule", "--model.policy.path", str(model),
                    "--model.objective", "rlhf_lightning.REBEL", "--model.reward", "rlhf_lightning.rewards.FunctionReward",
                    "--model.reward.function", "tiny.good_word_reward", "--data", "rlhf_lightning.data.PromptDataModule",
                    "--data.train_file", str(root / "data" / "train.jsonl"), "--data.tokenizer", str(model),
                    "--data.batch_size", "4", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
                    "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
                    "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(out),
                    "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--rollout.max_new_tokens", "4",
                    *strategy_args[strategy]]
            if lora:
                args += ["--model.policy.lora.r", "8", "--model.policy.lora.alpha", "16"]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
                   "PYTHONPATH": os.pathsep.join([str(HERE.parent / "tests"), os.environ.get("PYTHONPATH", "")])}
            done = subprocess.run([sys.executable, str(HERE / "memory_probe.py"), str(out), *args], env=env,
                                  capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-3000:])
            measured = max(json.loads(p.read_text())["bytes"] for p in out.glob("rank*.json"))
            states = model_states(shape, strategy, lora, gpus=2, w=4)
            predicted = states["weights"] + states["optimizer"] + states["reference"] + states["buckets"]
            rows.append({"strategy": strategy, "lora": lora, "measured_mib": measured / 2**20,
                         "predicted_mib": predicted / 2**20, "ratio": predicted / measured})
            print(rows[-1], flush=True)
    return rows


def measure_activations(root: Path) -> list[dict]:
    """Bytes the update's forward saves for backward (``saved_tensors_hooks``, storages counted once, weights
    excluded) on the small Llama in fp32, with and without gradient checkpointing, against :func:`activations`."""
    from transformers import AutoModelForCausalLM

    from rlhf_lightning.logprobs import response_logprobs

    model_dir, config = small_llama(root) if not (root / "model").exists() else (root / "model", None)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    shape = shape_of("measured Llama", model.config, lora_r=8)
    rows, seq, prompt = 4, 64, 16
    ids = torch.randint(3, 15, (rows, seq))
    results = []
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        saved: dict[int, int] = {}

        def pack(tensor):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights:
                saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            response_logprobs(model, ids, torch.ones_like(ids), prompt)
        predicted = activations(shape, rows, seq, seq - prompt, checkpointing, w=4)
        if checkpointing:  # the recomputed layer lives only during its backward: not among the saved tensors
            predicted -= rows * seq * (10 * shape.hidden + 3 * shape.kv_dim + 4 * shape.intermediate) * 4
        measured = sum(saved.values())
        results.append({"checkpointing": checkpointing, "measured_mib": measured / 2**20,
                        "predicted_mib": predicted / 2**20, "ratio": predicted / measured})
        print(results[-1], flush=True)
    return results


def table(shapes: list[Shape], gpus: int, capacity_gib: float, rows: int, seq: int, response: int) -> list[dict]:
    results = []
    for shape in shapes:
        for lora in (False, True):
            for critic in (False, True):
                for strategy in STRATEGIES:
                    usage = per_gpu(shape, strategy, lora, gpus, critic, rows, seq, response, generation_rows=2 * rows)
                    results.append({"model": shape.name, "params_b": shape.params / 1e9, "lora": lora,
                                    "critic": critic, "strategy": strategy, **usage,
                                    "fits": usage["total"] <= capacity_gib})
    return results


def markdown(results: list[dict], measured: list[dict] | None, activation_check: list[dict] | None, gpus: int, capacity: float, rows: int, seq: int) -> str:
    lines = [f"# Per-GPU memory on {gpus} × {capacity:.0f} GB (GiB; bf16 weights, AdamW, gradient checkpointing, "
             f"{rows} rows × {seq} tokens per micro-batch)", "",
             "Generated by `python benchmarks/memory.py`; the terms are explained in its docstring. "
             "✓ = fits in the GPU's memory with the activations of one micro-batch.", ""]
    lines += ["| model | training | critic (PPO) | DDP | FSDP2 (`fsdp`) | ZeRO-2 | ZeRO-3 |", "|---|---|---|---|---|---|---|"]
    keyed = {(r["model"], r["lora"], r["critic"], r["strategy"]): r for r in results}
    for model in dict.fromkeys(r["model"] for r in results):
        for lora in (False, True):
            for critic in (False, True):
                cells = []
                for strategy in STRATEGIES:
                    r = keyed[(model, lora, critic, strategy)]
                    cells.append(f"{r['total']:.1f} {'✓' if r['fits'] else '✗'}")
                lines.append(f"| {model} | {'LoRA r=16' if lora else 'full'} | {'yes' if critic else 'no'} | "
                             + " | ".join(cells) + " |")
    if measured:
        lines += ["", "## The model against measured runs", "",
                  "Bytes each rank keeps between steps (weights, optimizer state, reference), 2 CPU processes, fp32, "
                  "a 4-layer Llama (hidden 256, vocabulary 2048, "
                  "all tensors reachable from the models and optimizers counted once):", "",
                  "| strategy | training | measured MiB | model MiB | model / measured |", "|---|---|---|---|---|"]
        for m in measured:
            lines.append(f"| {m['strategy']} | {'LoRA' if m['lora'] else 'full'} | {m['measured_mib']:.1f} | "
                         f"{m['predicted_mib']:.1f} | {m['ratio']:.2f} |")
    if activation_check:
        lines += ["", "Activations saved for backward by the update's forward (4 rows × 64 tokens, 48 of them response, "
                  "fp32, one process):", "", "| gradient checkpointing | measured MiB | model MiB | model / measured |",
                  "|---|---|---|---|"]
        for m in activation_check:
            lines.append(f"| {'yes' if m['checkpointing'] else 'no'} | {m['measured_mib']:.2f} | "
                         f"{m['predicted_mib']:.2f} | {m['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--gpu-gib", type=float, default=80 * 1e9 / GIB)
    parser.add_argument("--rows", type=int, default=8, help="rows per micro-batch")
    parser.add_argument("--seq", type=int, default=565, help="prompt + response tokens (TL;DR: 512 + 53)")
    parser.add_argument("--response", type=int, default=53)
    parser.add_argument("--measure", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    shapes = published_shapes()
    results = table(shapes, args.gpus, args.gpu_gib, args.rows, args.seq, args.response)
    measured = activation_check = None
    if args.measure:
        with tempfile.TemporaryDirectory() as tmp:
            measured = measure(Path(tmp))
            activation_check = measure_activations(Path(tmp))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps({"shapes": [asdict(s) for s in shapes], "results": results,
                                                      "measured": measured, "activations": activation_check},
                                                     indent=2))
    text = markdown(results, measured, activation_check, args.gpus, args.gpu_gib * GIB / 1e9, args.rows, args.seq)
    (args.out / "memory.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
