"""Table 1 of the REBEL paper in miniature, with the paper's protocol, on the embedded headline task.

Protocol (seed 001, Appendix F.1.5): every online method trains from the same SFT warm start for **one epoch over
the same 16384 training prompts**, in rollout batches of the same 32 prompts, with its own samples per prompt and
inner epochs; DPO trains one epoch on offline preference pairs of the same prompts (two SFT samples ranked by the
gold judge, 10 % of the labels flipped). Every policy is then evaluated greedily on the 256 test posts::

    python benchmarks/table1.py                        # 9 methods × 3 seeds → benchmarks/results/table1.*
    python benchmarks/table1.py --seeds 0 --methods rebel ppo --parallel 2

Reported per method: win rate against the editors' headlines (the reference column) and against the SFT model,
the gold reward, KL(π‖π_SFT) on the test prompts, training time per rollout batch, per prompt and per generated
sample, and the process's peak memory (CPU peak RSS, or CUDA peak allocation on a GPU) — every method holds a
batch of 32 prompts, so peak memory compares per prompt as it stands, and ``MB / prompt`` divides it by 32. Cells
are the mean over seeds and its 95 % percentile-bootstrap interval (10,000 resamples of the seeds; with 3 seeds
the interval is coarse: it spans the seeds' range at most). Writes ``table1.json`` (one row per method and seed),
``table1.md`` and ``reward_vs_kl.png``. Runs live under ``benchmarks/results/runs/headline/`` and are reused
by ``eta_ablation.py`` and ``frontier.py``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from common import ROOT, Run, cell, run_all

PROMPTS_PER_BATCH = 32


@dataclass(frozen=True)
class Method:
    """A row of the table: its recipe under ``recipes/headline/``, samples per prompt and inner epochs (as the
    recipe sets them; 0 samples: offline)."""

    name: str
    samples_per_prompt: int
    inner_epochs: int


METHODS = {m.name: m for m in [
    Method("sft", 0, 0),
    Method("dpo", 0, 1),
    Method("online_dpo", 2, 4),
    Method("reinforce", 1, 1),
    Method("rloo", 4, 1),
    Method("grpo", 4, 1),
    Method("apa", 1, 2),
    Method("ppo", 1, 4),
    Method("rebel", 2, 4),
]}
TIMING_KEYS = ("seconds_per_batch", "seconds_per_prompt", "ms_per_sample", "peak_memory_mb", "memory_mb_per_prompt")
KEYS = ("win_rate_vs_reference", "win_rate_vs_sft", "reward", "kl", "seconds_per_batch", "seconds_per_prompt",
        "ms_per_sample", "peak_memory_mb", "memory_mb_per_prompt")


def job(name: str, seed: int, out: Path) -> Run:
    """The run of method ``name`` with ``seed`` (one epoch over the train prompts, the recipe's defaults)."""
    return Run(f"recipes/headline/{name}.yaml", seed, out / "runs" / "headline" / name / f"seed{seed}",
               ("--data.init_args.batch_size", str(PROMPTS_PER_BATCH)))


def row(method: Method, seed: int, summary: dict) -> dict:
    """One table row from a run's summary.json."""
    per_batch = summary.get("seconds_per_batch")
    sequences = PROMPTS_PER_BATCH * (method.samples_per_prompt or 2)  # DPO: a pair = two sequences
    return {"method": method.name, "seed": seed, **{k: summary.get(k) for k in
                                                       ("win_rate_vs_reference", "win_rate_vs_sft", "reward", "kl",
                                                        "peak_memory_mb", "rollout_batches", "wall_seconds")},
            "seconds_per_batch": per_batch,
            "seconds_per_prompt": per_batch / PROMPTS_PER_BATCH if per_batch is not None else None,
            "ms_per_sample": 1000 * per_batch / sequences if per_batch is not None else None,
            "memory_mb_per_prompt": (summary["peak_memory_mb"] / PROMPTS_PER_BATCH
                                     if summary.get("peak_memory_mb") is not None else None)}


def sft_row(seed: int, summary: dict) -> dict:
    """The SFT policy's own row, from any run's evaluation of its reference (the SFT model)."""
    return {"method": "sft", "seed": seed, "win_rate_vs_reference": summary["sft_win_rate_vs_reference"],
            "win_rate_vs_sft": 0.5, "reward": summary["sft_reward"], "kl": 0.0}


def write_markdown(rows: list[dict], path: Path, seeds: list[int], untimed: list[int] = ()) -> None:
    digits = dict(zip(KEYS, (3, 3, 3, 2, 3, 4, 2, 0, 1)))
    header = ("| method | samples / prompt | inner epochs | win rate vs reference | win rate vs SFT | gold reward "
              "| KL to SFT | s / batch | s / prompt | ms / sample | peak memory (MB) | MB / prompt |")
    oracle = next((r["oracle_reward"] for r in rows if r.get("oracle_reward") is not None), None)
    lines = [f"Embedded headline task, the paper's protocol: one epoch over the same 16384 prompts in batches of "
             f"{PROMPTS_PER_BATCH}, seeds {seeds}; greedy evaluation on 256 test posts. Mean over seeds "
             "[95 % percentile-bootstrap interval over seeds]. Times: training only, per rollout batch (generation, "
             "scoring and the inner epochs); peak memory: the whole process. "
             + (f"The judge's maximum (oracle headlines) is {oracle:.3f}. " if oracle is not None else "")
             + (f"Times and memory from seeds {[s for s in seeds if s not in untimed]} only: the runs of seeds "
                f"{list(untimed)} shared the CPU with other work." if untimed else ""),
             "", header, "|" + "---|" * 12]
    for name in dict.fromkeys(r["method"] for r in rows):
        group = [r for r in rows if r["method"] == name]
        method = METHODS[name]
        cells = [cell([r.get(k) for r in group], digits[k]) for k in KEYS]
        lines.append(f"| {name} | {method.samples_per_prompt or '–'} | {method.inner_epochs or '–'} | "
                     + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6.5, 4.2))
    for name in dict.fromkeys(r["method"] for r in rows):
        group = [r for r in rows if r["method"] == name]
        axis.scatter([r["kl"] for r in group], [r["win_rate_vs_reference"] for r in group], label=name)
    axis.set_xlabel("KL(π ‖ π_SFT) on the test posts")
    axis.set_ylabel("win rate vs the editors' headlines")
    axis.set_title("Headline task, one epoch over 16384 prompts (one point per seed)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (one CPU thread each)")
    parser.add_argument("--no-reuse", action="store_true", help="train again even where a finished run exists")
    parser.add_argument("--untimed-seeds", nargs="*", type=int, default=[],
                        help="seeds whose runs shared the machine with other work: their times and memory are left "
                             "out of the table (win rates, rewards and KL do not depend on load)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    trained = [name for name in args.methods if name != "sft"] or ["rebel"]
    jobs = [(name, seed) for seed in args.seeds for name in trained]

    def report(run: Run, summary: dict) -> None:
        print(f"  {run.recipe:<32} seed {run.seed}: win vs reference {summary['win_rate_vs_reference']:.3f}, "
              f"reward {summary['reward']:.3f}, KL {summary['kl']:.2f} ({summary.get('wall_seconds', 0):.0f} s)",
              flush=True)

    summaries = run_all([job(name, seed, args.out) for name, seed in jobs], args.parallel, not args.no_reuse, report)
    rows = []
    for seed in args.seeds:
        done = {name: s for (name, s_seed), s in zip(jobs, summaries) if s_seed == seed}
        if "sft" in args.methods:
            rows.append(sft_row(seed, next(iter(done.values()))))
        rows += [{**row(METHODS[name], seed, s), "oracle_reward": s.get("oracle_reward")}
                 for name, s in done.items() if name in args.methods]
    for r in rows:
        if r["seed"] in args.untimed_seeds:
            r.update({key: None for key in TIMING_KEYS})
    order = {name: i for i, name in enumerate(METHODS)}
    rows.sort(key=lambda r: (order[r["method"]], r["seed"]))
    (args.out / "table1.json").write_text(json.dumps(rows, indent=2) + "\n")
    write_markdown(rows, args.out / "table1.md", sorted(args.seeds), sorted(set(args.untimed_seeds)))
    plot(rows, args.out / "reward_vs_kl.png")
    print((args.out / "table1.md").read_text())


if __name__ == "__main__":
    main()
