"""benchmarks/common.py: the bootstrap interval, the table cells, and reuse of a finished run only when the
command and the embedded tasks' builds are the same (a rebuilt task trains again; nothing is reused by
accident). Also the Table 1 / η-ablation jobs: η = 1 is Table 1's REBEL run, the other η get their own folder."""

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.dont_write_bytecode = True
sys.path.insert(0, str(BENCHMARKS))
import common  # noqa: E402
import eta_ablation  # noqa: E402
import table1  # noqa: E402


def test_bootstrap_interval_holds_the_mean_and_is_deterministic():
    values = [0.2, 0.5, 0.6]
    low, high = common.bootstrap_ci(values)
    assert min(values) <= low <= statistics.fmean(values) <= high <= max(values)
    assert common.bootstrap_ci(values) == (low, high)
    assert common.bootstrap_ci([0.3]) is None and common.bootstrap_ci([]) is None
    assert common.bootstrap_ci([0.4, 0.4, 0.4]) == pytest.approx((0.4, 0.4))


def test_cells():
    assert common.cell([0.25], 2) == "0.25"
    assert common.cell([None, None], 2) == "–"
    assert common.cell([1.0, 1.0, None], 1) == "1.0 [1.0, 1.0]"


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "ROOT", tmp_path)
    task = tmp_path / "runs" / ".cache" / "headline"
    task.mkdir(parents=True)
    (task / "manifest.json").write_text('{"version": 1}')
    calls = []

    def fake_run(args, cwd, env, capture_output, text):
        calls.append(args)
        folder = Path(args[args.index("--trainer.default_root_dir") + 1])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "summary.json").write_text(json.dumps({"reward": 0.5 + len(calls)}))
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(common.subprocess, "run", fake_run)
    return tmp_path, task, calls


def test_a_finished_run_is_reused_only_for_the_same_command_and_task_build(workspace):
    root, task, calls = workspace
    job = common.Run("recipes/headline/rebel.yaml", 0, root / "out" / "rebel" / "seed0", ("--a", "1"))
    first = common.run(job)
    assert len(calls) == 1 and first["reward"] == 1.5 and "wall_seconds" in first
    assert common.run(job) == first and len(calls) == 1  # same command, same build: reused
    other_seed = common.Run(job.recipe, 1, job.folder, job.args)
    assert common.run(other_seed)["reward"] == 2.5 and len(calls) == 2  # another command: trained
    assert common.run(other_seed)["reward"] == 2.5 and len(calls) == 2
    (task / "manifest.json").write_text('{"version": 2}')  # the task was rebuilt
    assert common.run(other_seed)["reward"] == 3.5 and len(calls) == 3
    assert common.run(other_seed, reuse=False)["reward"] == 4.5 and len(calls) == 4


def test_a_failed_run_raises_with_its_error(workspace, monkeypatch):
    root, _, _ = workspace
    monkeypatch.setattr(common.subprocess, "run",
                        lambda args, **kw: subprocess.CompletedProcess(args, 1, "", "recipe broken"))
    with pytest.raises(RuntimeError, match="recipe broken"):
        common.run(common.Run("recipes/x.yaml", 0, root / "x"))


def test_run_all_keeps_the_order_of_the_jobs(workspace):
    root, _, calls = workspace
    jobs = [common.Run("recipes/headline/ppo.yaml", seed, root / f"s{seed}") for seed in range(4)]
    summaries = common.run_all(jobs, parallel=2)
    assert len(summaries) == 4 and len(calls) == 4
    assert [json.loads((job.folder / "summary.json").read_text()) == s for job, s in zip(jobs, summaries)] == [True] * 4


def test_eta_one_is_table1s_rebel_run_and_other_etas_get_their_own_folder(tmp_path):
    rebel = table1.job("rebel", 2, tmp_path)
    assert eta_ablation.job(1.0, 2, tmp_path) == rebel
    other = eta_ablation.job(0.3, 2, tmp_path)
    assert other.folder != rebel.folder and other.args[-2:] == ("--model.init_args.objective.init_args.eta", "0.3")
    assert rebel.recipe == "recipes/headline/rebel.yaml" and rebel.seed == 2
