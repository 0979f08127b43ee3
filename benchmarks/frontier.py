"""The reward–KL frontier of the REBEL paper (Figure 5) on the embedded headline task: REBEL against PPO.

Both train with Table 1's protocol (one epoch over the same 16384 prompts, batches of 32) and are evaluated on the
128 validation posts every 64 rollout batches (``every_n_rollouts`` of the headline recipes): gold reward against
KL(π‖π_SFT), one curve per seed, starting at the SFT model (KL 0)::

    python benchmarks/frontier.py                      # REBEL and PPO × 3 seeds (Table 1's runs, reused)
    python benchmarks/frontier.py --methods rebel ppo apa --seeds 0

Writes ``frontier.json`` (every evaluation of every run), ``frontier.md`` (per evaluation step: mean reward and
KL over seeds) and ``frontier.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import ROOT, run_all
from table1 import job


def curve(folder: Path) -> list[dict]:
    """The validation evaluations of one run, preceded by the SFT model's point (its reward on the same posts)."""
    history = [h for h in json.loads((folder / "eval_history.json").read_text()) if h.get("split") == "validation"]
    if not history:
        raise RuntimeError(f"{folder}: no validation evaluations in eval_history.json")
    points = [{"rollouts": 0, "reward": history[0]["sft_reward"], "kl": 0.0}]
    return points + [{"rollouts": h["rollouts"], "reward": h["reward"], "kl": h["kl"]} for h in history]


def write_markdown(rows: list[dict], path: Path, seeds: list[int]) -> None:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    steps = sorted({r["rollouts"] for r in rows})
    lines = [f"Gold reward and KL(π‖π_SFT) on the 128 validation posts during training, mean over seeds {seeds} "
             "(headline task, Table 1's protocol).", "",
             "| rollout batches | " + " | ".join(f"{m} reward | {m} KL" for m in methods) + " |",
             "|---|" + "---|---|" * len(methods)]
    for step in steps:
        cells = []
        for method in methods:
            group = [r for r in rows if r["method"] == method and r["rollouts"] == step]
            cells += ([f"{statistics.fmean(r['reward'] for r in group):.3f}",
                       f"{statistics.fmean(r['kl'] for r in group):.2f}"] if group else ["–", "–"])
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axis = plt.subplots(figsize=(6.5, 4.2))
    for index, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        for seed_index, seed in enumerate(dict.fromkeys(r["seed"] for r in rows if r["method"] == method)):
            points = sorted((r for r in rows if r["method"] == method and r["seed"] == seed),
                            key=lambda r: r["rollouts"])
            axis.plot([p["kl"] for p in points], [p["reward"] for p in points], "o-", markersize=3,
                      color=colours[index % len(colours)], alpha=0.8,
                      label=method if seed_index == 0 else None)
    axis.set_xlabel("KL(π ‖ π_SFT) on the validation posts")
    axis.set_ylabel("gold reward on the validation posts")
    axis.set_title("Reward–KL frontier during training (one curve per seed)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["rebel", "ppo"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (one CPU thread each)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    grid = [(method, seed) for method in args.methods for seed in args.seeds]
    jobs = [job(method, seed, args.out) for method, seed in grid]
    run_all(jobs, args.parallel)
    rows = [{"method": method, "seed": seed, **point} for (method, seed), run in zip(grid, jobs)
            for point in curve(run.folder)]
    (args.out / "frontier.json").write_text(json.dumps(rows, indent=2) + "\n")
    write_markdown(rows, args.out / "frontier.md", sorted(args.seeds))
    plot(rows, args.out / "frontier.png")
    print((args.out / "frontier.md").read_text())


if __name__ == "__main__":
    main()
