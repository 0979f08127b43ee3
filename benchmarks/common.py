"""What the benchmark scripts share: one training run per process, reuse of finished runs, and the 95 %
bootstrap interval of a mean over seeds.

A run is ``rlhf-lightning run <recipe> --seed_everything S --trainer.default_root_dir DIR ...`` in its own
process (so its peak memory is its own), with one CPU thread (``OMP_NUM_THREADS=1``) and no tracker. The exact
command is written to ``DIR/benchmark_args.json`` with a fingerprint of the embedded tasks' build manifests
(``runs/.cache/*/manifest.json``); a later script asking for the same command in the same folder, on the same
task builds, reuses the finished run (``summary.json``) instead of training again, which is how the η ablation
and the reward–KL frontier share Table 1's REBEL and PPO runs. A rebuilt task (new data or SFT model) trains
again.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Run:
    """One training run: ``recipe`` (relative to the repository) with ``seed`` and extra CLI ``args``, in
    ``folder``."""

    recipe: str
    seed: int
    folder: Path
    args: tuple[str, ...] = field(default_factory=tuple)

    def command(self) -> list[str]:
        return ["run", self.recipe, "--seed_everything", str(self.seed), "--trainer.default_root_dir",
                str(self.folder), "--overwrite", "true", "--trainer.logger", "false",
                "--trainer.enable_progress_bar", "false", *self.args]


def task_fingerprint() -> str:
    """SHA-256 of every embedded task's build manifest under ``runs/.cache`` (the data and the SFT model)."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "runs" / ".cache").glob("*/manifest.json")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def run(job: Run, reuse: bool = True) -> dict:
    """Train ``job`` (or reuse its finished run); its ``summary.json`` plus ``wall_seconds`` (the whole process:
    start, build checks, training, evaluations)."""
    marker = job.folder / "benchmark_args.json"
    summary_path = job.folder / "summary.json"
    if reuse and summary_path.exists() and marker.exists():
        if json.loads(marker.read_text()) == {"command": job.command(), "tasks": task_fingerprint()}:
            return json.loads(summary_path.read_text())
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "WANDB_MODE": "offline"}
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "rlhf_lightning.cli", *job.command()], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{job.recipe} seed {job.seed} failed:\n{result.stderr[-4000:]}")
    summary = json.loads(summary_path.read_text())
    summary["wall_seconds"] = round(time.time() - started, 1)
    summary_path.write_text(json.dumps(summary, indent=2))
    marker.write_text(json.dumps({"command": job.command(), "tasks": task_fingerprint()}))
    return summary


def run_all(jobs: Sequence[Run], parallel: int = 1, reuse: bool = True,
            report: Optional[Callable[[Run, dict], None]] = None) -> list[dict]:
    """Run ``jobs``, ``parallel`` processes at a time (each on one thread); summaries in the order of ``jobs``."""
    def one(job: Run) -> dict:
        summary = run(job, reuse)
        if report:
            report(job, summary)
        return summary

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return list(pool.map(one, jobs))


def bootstrap_ci(values: Sequence[float], resamples: int = 10_000, seed: int = 0) -> tuple[float, float] | None:
    """95 % percentile-bootstrap interval of the mean of ``values`` (None for fewer than two values)."""
    if len(values) < 2:
        return None
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(resamples))
    return means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def cell(values: Iterable[Optional[float]], digits: int) -> str:
    """``mean [low, high]`` (the 95 % bootstrap interval when there are several values); ``–`` when none."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean = statistics.fmean(values)
    ci = bootstrap_ci(values)
    return f"{mean:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")
