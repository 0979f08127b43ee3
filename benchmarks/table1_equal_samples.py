"""The equal-sample view of Table 1 on the quick embedded summarisation task (the paper's protocol, on the
harder headline task, is ``benchmarks/table1.py``).

Every method trains from the same SFT warm start against the gold judge with the same budget of
generated samples (per seed), then is evaluated on the 256 test prompts by the gold judge::

    python benchmarks/table1_equal_samples.py                      # 9 methods × 3 seeds → benchmarks/results/
    python benchmarks/table1_equal_samples.py --seeds 0 --methods rebel ppo

Each run is its own process (``rlhf-lightning run recipes/<method>.yaml ...``), so ``peak_memory_mb``
(CPU peak RSS, or CUDA peak allocation on a GPU) is per method. Writes ``table1_equal_samples.json`` (one row per
method and seed), ``table1_equal_samples.md`` (mean ± spread over seeds) and ``reward_vs_kl_equal_samples.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from common import ROOT, Run, run
KEYS = ("win_rate_vs_sft", "win_rate_vs_reference", "reward", "kl", "seconds_per_batch", "ms_per_sequence",
        "peak_memory_mb")


@dataclass(frozen=True)
class Method:
    name: str
    recipe: str
    samples_per_prompt: int  # generated samples per prompt and rollout batch (0: offline)
    args: tuple[str, ...] = field(default_factory=tuple)


METHODS = {m.name: m for m in [
    Method("sft", "", 0),
    Method("dpo", "recipes/dpo.yaml", 0),
    Method("online_dpo", "recipes/online_dpo.yaml", 2),
    Method("reinforce", "recipes/reinforce.yaml", 1),
    Method("rloo_k2", "recipes/rloo.yaml", 2, ("--model.init_args.objective.init_args.k", "2")),
    Method("rloo_k4", "recipes/rloo.yaml", 4, ("--model.init_args.objective.init_args.k", "4")),
    Method("ppo", "recipes/ppo.yaml", 1),
    Method("grpo", "recipes/grpo.yaml", 4),
    Method("rebel", "recipes/rebel.yaml", 2),
]}


def run_method(method: Method, seed: int, budget: int, prompts_per_batch: int, out: Path) -> dict:
    """Train one method with ``budget`` generated samples; returns its summary.json."""
    args = ["--data.init_args.batch_size", str(prompts_per_batch), *method.args]
    if method.samples_per_prompt:
        batches = max(1, budget // (prompts_per_batch * method.samples_per_prompt))
        args += ["--trainer.limit_train_batches", str(batches)]
    summary = run(Run(method.recipe, seed, out / "runs_equal_samples" / method.name / f"seed{seed}", tuple(args)))
    print(f"  {method.name:<11} seed {seed}: win vs SFT {summary['win_rate_vs_sft']:.3f}, reward "
          f"{summary['reward']:.3f}, KL {summary['kl']:.2f} ({summary.get('wall_seconds', 0):.0f} s)", flush=True)
    return summary


def per_sequence_ms(method: Method, summary: dict, prompts_per_batch: int) -> float:
    """Milliseconds per generated (or, for DPO, per preference-pair) sequence of a training batch."""
    sequences = prompts_per_batch * (method.samples_per_prompt or 2)
    return round(1000 * summary["seconds_per_batch"] / sequences, 3)


def sft_row(summary: dict, seed: int) -> dict:
    """The SFT policy's own row, read from any trained run's evaluation of its reference policy."""
    return {"method": "sft", "seed": seed, "win_rate_vs_sft": 0.5,
            "win_rate_vs_reference": summary["sft_win_rate_vs_reference"], "reward": summary["sft_reward"],
            "kl": 0.0, "seconds_per_batch": 0.0, "ms_per_sequence": 0.0, "peak_memory_mb": None}


def aggregate(rows: list[dict]) -> dict[str, dict[str, tuple[float, float]]]:
    """Mean and spread (max − min over seeds, halved) per method and key."""
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for name in dict.fromkeys(r["method"] for r in rows):
        group = [r for r in rows if r["method"] == name]
        table[name] = {}
        for key in KEYS:
            values = [r[key] for r in group if r.get(key) is not None]
            if values:
                table[name][key] = (statistics.fmean(values), (max(values) - min(values)) / 2)
    return table


def write_markdown(table: dict, path: Path, seeds: list[int], budget: int) -> None:
    header = ("| method | win rate vs SFT | win rate vs reference | gold reward | KL to ref | s / rollout batch "
              "| ms / sequence | peak memory (MB) |")
    lines = [f"Embedded summarisation task, {budget} generated samples per run, seeds {seeds}; "
             "mean ± half-range over seeds. A batch holds 32 prompts × the method's samples per prompt "
             "(DPO: 32 pairs = 64 sequences); ms / sequence = s per batch / sequences per batch.",
             "", header, "|" + "---|" * 8]
    for name, stats in table.items():
        cells = []
        for key, digits in zip(KEYS, (3, 3, 3, 2, 3, 2, 0)):
            if key in stats:
                mean, spread = stats[key]
                cells.append(f"{mean:.{digits}f} ± {spread:.{digits}f}")
            else:
                cells.append("–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r["method"] for r in rows):
        group = [r for r in rows if r["method"] == name]
        axis.scatter([r["kl"] for r in group], [r["reward"] for r in group], label=name)
    axis.set_xlabel("KL(π ‖ π_ref) on test prompts")
    axis.set_ylabel("gold reward on test prompts")
    axis.set_title("Reward vs KL (one point per seed)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget", type=int, default=1024, help="generated samples per run")
    parser.add_argument("--prompts-per-batch", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the table and the plot from an existing table1_equal_samples.json")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        rows = json.loads((args.out / "table1_equal_samples.json").read_text())
        for row in rows:
            if row["method"] == "sft":
                row["ms_per_sequence"] = 0.0
            elif row.get("ms_per_sequence") is None:
                row["ms_per_sequence"] = per_sequence_ms(METHODS[row["method"]], row, args.prompts_per_batch)
        report(rows, args)
        return

    rows: list[dict] = []
    for seed in args.seeds:
        print(f"seed {seed}", flush=True)
        summaries = {}
        for name in args.methods:
            if name == "sft":
                continue
            summary = run_method(METHODS[name], seed, args.budget, args.prompts_per_batch, args.out)
            summaries[name] = summary
            rows.append({"method": name, "seed": seed, **{k: summary.get(k) for k in KEYS}})
            rows[-1]["ms_per_sequence"] = per_sequence_ms(METHODS[name], summary, args.prompts_per_batch)
        if "sft" in args.methods and summaries:
            rows.insert(len(rows) - len(summaries), sft_row(next(iter(summaries.values())), seed))
    report(rows, args)


def report(rows: list[dict], args: argparse.Namespace) -> None:
    order = {name: i for i, name in enumerate(METHODS)}
    rows.sort(key=lambda r: (order[r["method"]], r["seed"]))
    (args.out / "table1_equal_samples.json").write_text(json.dumps(rows, indent=2))
    seeds = sorted({r["seed"] for r in rows})
    write_markdown(aggregate(rows), args.out / "table1_equal_samples.md", seeds, args.budget)
    plot(rows, args.out / "reward_vs_kl_equal_samples.png")
    print((args.out / "table1_equal_samples.md").read_text())


if __name__ == "__main__":
    main()
