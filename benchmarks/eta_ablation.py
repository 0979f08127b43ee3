"""The η ablation of the REBEL paper (Table 6) on the embedded headline task.

REBEL regresses ``(r(x, y) − r(x, y')) / η`` onto the difference of log-ratios, so ``1/η`` scales the reward
differences it fits (η plays the role of a step size: seed 001, Section 3). The paper's grid, η = 0.3 / 0.7 /
1.0 / 2.0, gave win rates 55.5 / 59.9 / 70.2 / 62.5 at 2.8B on TL;DR. Here every η trains with Table 1's protocol
(one epoch over the same 16384 prompts, batches of 32, 3 seeds), plus one value far outside the grid::

    python benchmarks/eta_ablation.py                  # η ∈ {0.3, 0.7, 1.0, 2.0, 10.0} × 3 seeds
    python benchmarks/eta_ablation.py --etas 0.5 1.0 --seeds 0 --parallel 2

η = 1.0 is the shipped recipe, so its runs are Table 1's REBEL runs (reused when present). Writes
``eta_ablation.json``, ``eta_ablation.md`` (mean [95 % bootstrap interval over seeds]) and ``eta_ablation.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import ROOT, Run, bootstrap_ci, cell, run_all
from table1 import job as table1_job

ETAS = (0.3, 0.7, 1.0, 2.0, 10.0)
PAPER = {0.3: 55.5, 0.7: 59.9, 1.0: 70.2, 2.0: 62.5}  # Table 6, win rate (%) at 2.8B


def job(eta: float, seed: int, out: Path) -> Run:
    """REBEL with ``eta`` (the shipped recipe for η = 1, i.e. Table 1's run)."""
    base = table1_job("rebel", seed, out)
    if eta == 1.0:
        return base
    return Run(base.recipe, seed, out / "runs" / "headline" / f"rebel_eta{eta:g}" / f"seed{seed}",
               (*base.args, "--model.init_args.objective.init_args.eta", str(eta)))


def write_markdown(rows: list[dict], path: Path, seeds: list[int]) -> None:
    lines = [f"REBEL on the embedded headline task with Table 1's protocol, seeds {seeds}; mean [95 % "
             "percentile-bootstrap interval over seeds]. Paper: Table 6 of seed 001 (TL;DR, 2.8B, win rate %).", "",
             "| η | win rate vs reference | win rate vs SFT | gold reward | KL to SFT | paper win rate (%) |",
             "|---|---|---|---|---|---|"]
    for eta in dict.fromkeys(r["eta"] for r in rows):
        group = [r for r in rows if r["eta"] == eta]
        lines.append(f"| {eta:g} | {cell([r['win_rate_vs_reference'] for r in group], 3)} | "
                     f"{cell([r['win_rate_vs_sft'] for r in group], 3)} | {cell([r['reward'] for r in group], 3)} | "
                     f"{cell([r['kl'] for r in group], 2)} | {PAPER.get(eta, '–')} |")
    path.write_text("\n".join(lines) + "\n")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    etas = sorted(dict.fromkeys(r["eta"] for r in rows))
    fig, axis = plt.subplots(figsize=(6, 4))
    means, lows, highs = [], [], []
    for eta in etas:
        values = [r["win_rate_vs_reference"] for r in rows if r["eta"] == eta]
        mean = statistics.fmean(values)
        ci = bootstrap_ci(values) or (mean, mean)
        means.append(mean)
        lows.append(mean - ci[0])
        highs.append(ci[1] - mean)
        axis.scatter([eta] * len(values), values, color="tab:blue", alpha=0.35, s=14)
    axis.errorbar(etas, means, yerr=[lows, highs], fmt="o-", color="tab:blue", capsize=4, label="miniature (mean, 95 % CI)")
    paper = [eta for eta in etas if eta in PAPER]
    if paper:
        twin = axis.twinx()
        twin.plot(paper, [PAPER[eta] for eta in paper], "s--", color="tab:orange", label="paper, 2.8B (%)")
        twin.set_ylabel("paper win rate (%)", color="tab:orange")
        twin.legend(loc="lower right", fontsize=8)
    axis.set_xscale("log")
    axis.set_xlabel("η")
    axis.set_ylabel("win rate vs the editors' headlines")
    axis.set_title("REBEL η ablation (headline task)")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--etas", nargs="+", type=float, default=list(ETAS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (one CPU thread each)")
    parser.add_argument("--no-reuse", action="store_true", help="train again even where a finished run exists")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    grid = [(eta, seed) for eta in args.etas for seed in args.seeds]
    summaries = run_all([job(eta, seed, args.out) for eta, seed in grid], args.parallel, not args.no_reuse,
                        lambda run, s: print(f"  {run.folder.parent.name} seed {run.seed}: win vs reference "
                                             f"{s['win_rate_vs_reference']:.3f}, KL {s['kl']:.2f}", flush=True))
    rows = [{"eta": eta, "seed": seed, **{k: s[k] for k in ("win_rate_vs_reference", "win_rate_vs_sft", "reward", "kl")}}
            for (eta, seed), s in zip(grid, summaries)]
    (args.out / "eta_ablation.json").write_text(json.dumps(rows, indent=2) + "\n")
    write_markdown(rows, args.out / "eta_ablation.md", sorted(args.seeds))
    plot(rows, args.out / "eta_ablation.png")
    print((args.out / "eta_ablation.md").read_text())


if __name__ == "__main__":
    main()
