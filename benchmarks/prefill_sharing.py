"""Generation time with and without sharing a prompt's prefill among its k samples (``HFGenerator``).

For each prompt width P and samples per prompt k, the same random Llama (no download: built from a
config, ~30M parameters by default) generates k samples for each of B prompts, once with every prompt
repeated k times and prefilled k times (``share_prefill_from: null``), once with one prefill per prompt
whose KV cache is copied to its samples (``share_prefill_from: 2``). The two run alternately, ``--repeats``
times each, in one process with one thread; the table shows the median seconds and their ratio::

    python benchmarks/prefill_sharing.py                      # ≈ 3 min on one CPU core
    python benchmarks/prefill_sharing.py --widths 64 256 --samples 2 4 --new-tokens 32

Results: ``<out>/prefill_sharing.md`` and ``<out>/prefill_sharing.json``. They set the default of
``HFGenerator.share_prefill_from``: the smallest width at which sharing is faster.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent


def build(hidden: int, layers: int, vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                         num_key_value_heads=max(1, hidden // 64), max_position_embeddings=4096,
                         pad_token_id=0, eos_token_id=1, bos_token_id=None)
    return LlamaForCausalLM(config).eval()


class _Tokenizer:
    """The two ids an engine needs (no vocabulary is needed to time generation)."""

    eos_token_id, pad_token_id, chat_template = 1, 0, None


def time_generation(model, engine, input_ids, attention_mask, params) -> float:
    start = time.perf_counter()
    engine.generate(model, input_ids, attention_mask, params)
    return time.perf_counter() - start


def main() -> None:
    from rlhf_lightning.generation import HFGenerator, SamplingParams

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 64, 128, 256])
    parser.add_argument("--samples", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--prompts", type=int, default=8, help="prompts per batch (B)")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = build(args.hidden, args.layers, args.vocab)
    parameters = sum(p.numel() for p in model.parameters())
    engines = {"repeated": HFGenerator(share_prefill_from=None), "shared": HFGenerator(share_prefill_from=2)}
    for engine in engines.values():
        engine.setup(_Tokenizer(), model)
    rows = []
    generator = torch.Generator().manual_seed(0)
    for width in args.widths:
        input_ids = torch.randint(2, args.vocab, (args.prompts, width), generator=generator)
        attention_mask = torch.ones_like(input_ids)
        attention_mask[::2, : width // 4] = 0  # every other prompt left-padded by a quarter
        for k in args.samples:
            params = SamplingParams(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, num_samples=k)
            seconds = {name: [] for name in engines}
            time_generation(model, engines["repeated"], input_ids, attention_mask, params)  # warm-up
            for _ in range(args.repeats):
                for name, engine in engines.items():
                    seconds[name].append(time_generation(model, engine, input_ids, attention_mask, params))
            medians = {name: statistics.median(values) for name, values in seconds.items()}
            row = {"width": width, "k": k, **{f"{n}_seconds": round(v, 4) for n, v in medians.items()},
                   "speedup": round(medians["repeated"] / medians["shared"], 3), "all_seconds": seconds}
            rows.append(row)
            print(f"P={width:4d} k={k}: repeated {medians['repeated']:.3f} s, shared {medians['shared']:.3f} s, "
                  f"×{row['speedup']:.2f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    setup = (f"random Llama, {parameters / 1e6:.1f}M parameters (hidden {args.hidden}, {args.layers} layers, "
             f"vocabulary {args.vocab}), B = {args.prompts} prompts, {args.new_tokens} new tokens (EOS forbidden "
             f"so every run generates the same length), fp32, 1 thread, median of {args.repeats} alternating runs")
    (args.out / "prefill_sharing.json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=2))
    lines = ["# Sharing the prefill among a prompt's samples (HFGenerator)", "", setup, "",
             "| prompt width P | samples k | repeated prompts (s) | shared prefill (s) | speed-up |",
             "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['width']} | {r['k']} | {r['repeated_seconds']:.3f} | {r['shared_seconds']:.3f} | "
              f"{r['speedup']:.2f}× |" for r in rows]
    (args.out / "prefill_sharing.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
