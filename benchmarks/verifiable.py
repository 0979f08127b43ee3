"""GRPO, Dr. GRPO, RLOO and REBEL on the embedded verifiable-reward (addition) task.

Every method trains from the same SFT warm start (``runs/.cache/arithmetic/sft``) against the 0/1 exact-answer
reward, with the same budget of generated samples per run, then is evaluated greedily on the 256 test
problems by the same reward (``reward`` = test accuracy)::

    python benchmarks/verifiable.py                       # 4 methods × 3 seeds → benchmarks/results/
    python benchmarks/verifiable.py --seeds 0 --budget 1024

Each run is its own process (``rlhf-lightning run recipes/verifiable/<method>.yaml ...``), as in
``benchmarks/table1.py``. Writes ``verifiable.json`` (one row per method and seed) and ``verifiable.md``: the
mean over seeds and a 95 % percentile-bootstrap interval of that mean (10,000 resamples of the seeds; with
one seed there is no interval).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import ROOT, Run, cell, run
METHODS = {"grpo": 4, "dr_grpo": 4, "rloo": 4, "rebel": 2}  # recipe name → samples per prompt
KEYS = ("accuracy", "kl", "seconds")


def run_method(name: str, seed: int, budget: int, prompts_per_batch: int, out: Path) -> dict:
    """Train one method with ``budget`` generated samples; returns its summary.json."""
    batches = max(1, budget // (prompts_per_batch * METHODS[name]))
    summary = run(Run(f"recipes/verifiable/{name}.yaml", seed, out / "runs" / name / f"seed{seed}",
                      ("--data.init_args.batch_size", str(prompts_per_batch),
                       "--trainer.limit_train_batches", str(batches))))
    summary["seconds"] = summary["wall_seconds"]
    print(f"  {name:<8} seed {seed}: accuracy {summary['reward']:.3f} (SFT {summary['sft_reward']:.3f}), "
          f"KL {summary['kl']:.2f} ({summary['seconds']:.0f} s)", flush=True)
    return summary


def write_markdown(rows: list[dict], path: Path, seeds: list[int], budget: int) -> None:
    lines = [f"Embedded addition task (two-digit operands), {budget} generated samples per run, seeds {seeds}; "
             "greedy accuracy on 256 test problems; mean over seeds and, with several seeds, its 95 % "
             "percentile-bootstrap interval over seeds. KL: KL(π‖π_SFT) on the test prompts, seconds: the "
             "whole run (process start, training, evaluation).", "",
             "| method | test accuracy | SFT accuracy | KL to SFT | seconds |", "|---|---|---|---|---|"]
    for name in dict.fromkeys(r["method"] for r in rows):
        group = [r for r in rows if r["method"] == name]
        lines.append(f"| {name} | {cell([r['accuracy'] for r in group], 3)} | "
                     f"{cell([r['sft_accuracy'] for r in group], 3)} | {cell([r['kl'] for r in group], 2)} | "
                     f"{cell([r['seconds'] for r in group], 0)} |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget", type=int, default=4096, help="generated samples per run")
    parser.add_argument("--prompts-per-batch", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        print(f"seed {seed}", flush=True)
        for name in args.methods:
            summary = run_method(name, seed, args.budget, args.prompts_per_batch, args.out)
            rows.append({"method": name, "seed": seed, "accuracy": summary["reward"],
                         "sft_accuracy": summary["sft_reward"], "kl": summary["kl"], "seconds": summary["seconds"],
                         "win_rate_vs_sft": summary.get("win_rate_vs_sft")})
    (args.out / "verifiable.json").write_text(json.dumps(rows, indent=2) + "\n")
    write_markdown(rows, args.out / "verifiable.md", sorted(set(args.seeds)), args.budget)
    print((args.out / "verifiable.md").read_text())


if __name__ == "__main__":
    main()
