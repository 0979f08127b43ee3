"""Throughput and peak memory of our online trainers against TRL's, on the same tiny CPU workload.

Trains, one after the other and each in its own process (so peak RSS is per configuration):

    ours_rebel          rlhf_lightning REBEL, 1 inner epoch (1 optimizer update per rollout batch)
    ours_rebel_4epochs  REBEL with its default 4 inner epochs (4 updates per rollout batch; extra row)
    ours_rloo_k2        rlhf_lightning RLOO, k = 2
    trl_rloo_k2         trl.RLOOTrainer, num_generations = 2
    trl_grpo            trl.GRPOTrainer, num_generations = 2, beta = kl_coef (KL to a reference, like ours)
    trl_grpo_beta0      trl.GRPOTrainer with TRL's default beta = 0 (no reference model; extra row)

on the same tiny local model (the embedded task's SFT Llama, copied to a temporary folder), the same
prompts in the same order, the same number of prompts per step, 2 completions per prompt, the same
``max_new_tokens``, temperature 1.0, the same learning rate / schedule / clipping, the same KL
coefficient and the same Python reward function (:func:`overlap_reward`), fp32, no gradient
checkpointing, and 1 optimizer update per rollout batch (except ``ours_rebel_4epochs``)::

    python benchmarks/vs_trl.py                          # ≈ 5 min on 2 idle CPU cores
    python benchmarks/vs_trl.py --steps 100 --prompts-per-step 16 --repeats 5 --out benchmarks/results
    python benchmarks/vs_trl.py --only ours_rloo_k2 trl_rloo_k2

TRL is an optional benchmark dependency (``pip install trl``); the library itself never imports it.

Timing: every run does ``--warmup`` rollout batches first (not timed: lazy initialisation, first
``generate``), then ``--steps`` timed ones. The timed wall clock runs from the end of the last warm-up
step to the end of the last step, measured by a callback at the end of each step (Lightning's
``on_train_batch_end``, transformers' ``on_step_end``), so it covers everything a step costs:
prompt loading, generation, log-prob passes, reward, backward, optimizer, logging and the trainer's
own overhead. Model loading is excluded. ``samples/s`` = generated completions in the timed steps /
timed seconds; "samples/s at the median step" = completions per step / the median step time (less
sensitive to bursts of other jobs on a shared machine). Peak memory is the process's peak RSS (``ru_maxrss``: imports + models + training).
Both libraries run with ``OMP_NUM_THREADS=1`` and ``torch.set_num_threads(1)`` (tiny models run far
faster single-threaded on a small CPU). With ``--repeats R`` the configurations run round-robin R
times and the table shows the median samples/s (and the largest peak RSS).

The per-step breakdown (generation / log-prob passes / reward / update / framework overhead) comes
from our module's own timers and from timing wrappers put around TRL's methods in its worker
(the library code is not changed). Results: ``<out>/vs_trl.md`` and ``<out>/vs_trl.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

WORKER_STARTED = time.perf_counter()  # in a worker: before torch and the libraries are imported
ROOT = Path(__file__).resolve().parents[1]
TASK_DIR = ROOT / "runs" / ".cache" / "summarize"
HERE = Path(__file__).resolve().parent

# name -> (library, objective, completions per prompt, optimizer updates per rollout batch)
CONFIGS = {
    "ours_rebel": ("ours", "rebel", 2, 1),
    "ours_rebel_4epochs": ("ours", "rebel", 2, 4),
    "ours_rloo_k2": ("ours", "rloo", 2, 1),
    "trl_rloo_k2": ("trl", "rloo", 2, 1),
    "trl_grpo": ("trl", "grpo", 2, 1),
    "trl_grpo_beta0": ("trl", "grpo", 2, 1),
}
# ratios reported: (ours, trl)
RATIOS = [("ours_rloo_k2", "trl_rloo_k2"), ("ours_rebel", "trl_rloo_k2"), ("ours_rloo_k2", "trl_grpo"),
          ("ours_rebel", "trl_grpo"), ("ours_rebel_4epochs", "trl_rloo_k2"), ("ours_rloo_k2", "trl_grpo_beta0"),
          ("ours_rebel", "trl_grpo_beta0")]
TARGET = 1.2
PHASES = ("generation", "logprobs", "reward", "update", "overhead")

ENV = {
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
    "WANDB_MODE": "disabled", "WANDB_SILENT": "true", "DISABLE_MLFLOW_INTEGRATION": "TRUE",
    "PYTHONDONTWRITEBYTECODE": "1",  # no __pycache__ next to this script from the workers' `import vs_trl`
}


# ----------------------------------------------------------------------------- shared reward
_REWARD_STATS = {"seconds": 0.0, "calls": 0}


def _overlap_score(prompt: str, response: str) -> float:
    post = prompt.split("summary:")[0].removeprefix("post:").split()
    words = response.split()
    hits = len(set(words) & set(post))
    repeats = len(words) - len(set(words))
    return hits / max(len(set(post)), 1) - 0.2 * repeats - 0.05 * max(len(words) - 6, 0)


def overlap_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """The reward both libraries train on: the share of the post's distinct words that the response
    contains, − 0.2 per repeated word, − 0.05 per word beyond 6. Pure Python, about as cheap as the task's
    gold judge, and defined here so that scoring imports neither library (the TRL workers never import
    Lightning, so their memory is TRL's alone)."""
    start = time.perf_counter()
    scores = [_overlap_score(p, r) for p, r in zip(prompts, responses)]
    _REWARD_STATS["seconds"] += time.perf_counter() - start
    _REWARD_STATS["calls"] += 1
    return scores


def trl_overlap_reward(prompts, completions, **kwargs) -> list[float]:
    """:func:`overlap_reward` with TRL's reward-function signature."""
    return overlap_reward(prompts, completions)


def _rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class _Clock:
    """Step-end timestamps plus per-step phase times; shared by both workers."""

    def __init__(self) -> None:
        self.start = 0.0
        self.cpu_start = 0.0
        self.step_ends: list[float] = []
        self.step_cpu_ends: list[float] = []
        self.phases: list[dict[str, float]] = []  # per step: generation, rollout, reward, update
        self.rss_at_start_mb = 0.0
        self.reward_mark = 0.0

    def begin(self) -> None:
        self.start = time.perf_counter()
        self.cpu_start = time.process_time()
        self.rss_at_start_mb = _rss_peak_mb()

    def end_step(self, phases: dict[str, float]) -> None:
        self.step_ends.append(time.perf_counter())
        self.step_cpu_ends.append(time.process_time())
        phases["reward"] = _REWARD_STATS["seconds"] - self.reward_mark
        self.reward_mark = _REWARD_STATS["seconds"]
        self.phases.append(phases)

    def timed_window(self, name: str, warmup: int, steps: int) -> tuple[float, float, list[float]]:
        """Wall and CPU seconds from the end of the last warm-up step to the end of the last step, and
        every step's wall seconds (warm-up included)."""
        ends, cpu_ends = self.step_ends, self.step_cpu_ends
        if len(ends) != warmup + steps:
            raise RuntimeError(f"{name}: expected {warmup + steps} steps, recorded {len(ends)}")
        seconds = ends[-1] - (ends[warmup - 1] if warmup else self.start)
        cpu_seconds = cpu_ends[-1] - (cpu_ends[warmup - 1] if warmup else self.cpu_start)
        step_seconds = [b - a for a, b in zip([self.start] + ends[:-1], ends)]
        return seconds, cpu_seconds, step_seconds


def __getattr__(name: str):
    # The Lightning callback is built on first use (jsonargparse imports it as vs_trl.StepClock), so
    # that the TRL workers never import Lightning and their memory is TRL's alone.
    if name == "StepClock":
        from lightning.pytorch import Callback

        class StepClock(Callback):
            """Records the end of every training batch and the module's own phase timers."""

            def __init__(self) -> None:
                self.clock = _Clock()
                self.busy = 0.0

            def on_train_start(self, trainer, pl_module) -> None:
                self.clock.begin()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                rollout = outputs.get("rollout") if isinstance(outputs, dict) else None  # training_step's
                info = dict(rollout.metrics) if rollout is not None else {}
                rollout_seconds = float(info.get("time/rollout_seconds", 0.0))
                # the module's busy time is rollout + update seconds; reading it is cheaper than
                # trainer.callback_metrics, so the clock adds nothing measurable to our step
                busy = getattr(pl_module, "_busy_seconds", None)
                if busy is not None:
                    update, self.busy = busy - self.busy - rollout_seconds, busy
                else:
                    update = float(trainer.callback_metrics.get("time/update_seconds", 0.0))
                self.clock.end_step({
                    "generation": float(info.get("time/generation_seconds", 0.0)),
                    "rollout": rollout_seconds,
                    "update": update,
                    "length": float(info.get("gen/length", 0.0)),
                })

        globals()["StepClock"] = StepClock
        return StepClock
    raise AttributeError(name)


# ----------------------------------------------------------------------------- workers
def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)


def worker_ours(spec: dict) -> dict:
    _single_thread()
    from rlhf_lightning.cli import RLHFCLI

    _, objective, k, updates = CONFIGS[spec["name"]]
    model, root = spec["model_dir"], spec["run_dir"]
    if objective == "rloo":
        objective_args = ["--model.objective", "rlhf_lightning.objectives.RLOO", "--model.objective.k", str(k)]
    else:
        objective_args = ["--model.objective", "rlhf_lightning.objectives.REBEL",
                          "--model.objective.inner_epochs", str(updates)]
    args = [
        "fit", "--seed_everything", "0", "--cpu_threads", "1",
        "--model", "rlhf_lightning.RLHFModule", "--model.policy.path", model, *objective_args,
        "--model.reward", "rlhf_lightning.rewards.FunctionReward", "--model.reward.function", "vs_trl.overlap_reward",
        "--model.lr", str(spec["lr"]), "--model.lr_schedule", "linear", "--model.max_grad_norm", "1.0",
        "--data", "rlhf_lightning.data.PromptDataModule", "--data.train_file", spec["prompts_file"],
        "--data.tokenizer", model, "--data.batch_size", str(spec["prompts_per_step"]), "--data.shuffle", "false",
        "--data.reference_column", "null",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(spec["warmup"] + spec["steps"]),
        "--trainer.log_every_n_steps", "1",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", root,
        "--trainer.default_root_dir", root, "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.enable_checkpointing", "false",
        "--rollout.max_new_tokens", str(spec["max_new_tokens"]), "--rollout.temperature", "1.0",
        "--rollout.kl_coef", str(spec["kl_coef"]), "--rollout.no_eos_reward", "null",
        "--trainer.callbacks+=vs_trl.StepClock",
    ]
    cli = RLHFCLI(args=args)
    clock = next(c for c in cli.trainer.callbacks if type(c).__name__ == "StepClock").clock
    summary = json.loads((Path(root) / "summary.json").read_text())
    return {"clock": clock, "updates": cli.trainer.global_step, "module_summary": summary}


def worker_trl(spec: dict) -> dict:
    _single_thread()
    import vs_trl as bench
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    name = spec["name"]
    _, objective, k, _ = CONFIGS[name]
    if objective == "rloo":
        from trl import RLOOConfig as Config, RLOOTrainer as Trainer
    else:
        from trl import GRPOConfig as Config, GRPOTrainer as Trainer
    beta = 0.0 if name == "trl_grpo_beta0" else spec["kl_coef"]
    rows = [json.loads(line) for line in Path(spec["prompts_file"]).read_text().splitlines() if line.strip()]
    dataset = Dataset.from_list([{"prompt": row["prompt"]} for row in rows])
    config = Config(
        output_dir=spec["run_dir"], seed=0, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        per_device_train_batch_size=spec["prompts_per_step"] * k,  # counts completions
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1, num_generations=k,
        max_completion_length=spec["max_new_tokens"], temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=spec["lr"], lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch", beta=beta, max_steps=spec["warmup"] + spec["steps"], shuffle_dataset=False,
        disable_dropout=True, logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0,
    )
    clock = bench._Clock()
    current: dict[str, float] = {}

    timed = make_timer(current)

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.begin()

        def on_step_end(self, args, state, control, **kwargs):
            # update = loss forward + backward (training_step minus the rollout it starts with) + what the
            # loop does between training_step and on_step_end: clipping, optimizer, scheduler, zero_grad
            after_step = time.perf_counter() - current.get("train_step_end", time.perf_counter())
            rollout, step = current.get("rollout", 0.0), current.get("train_step", 0.0)
            clock.end_step({"generation": current.get("generation", 0.0), "rollout": rollout,
                            "update": step - rollout + after_step})
            current.clear()

    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    trainer = Trainer(model=spec["model_dir"], reward_funcs=bench.trl_overlap_reward, args=config,
                      train_dataset=dataset, processing_class=tokenizer, callbacks=[Clock()])
    trainer.remove_callback(PrinterCallback)  # no per-step printing (our side logs to a CSV file)
    trainer.remove_callback(ProgressCallback)
    trainer._generate_single_turn = timed(trainer._generate_single_turn, "generation")
    trainer._generate_and_score_completions = timed(trainer._generate_and_score_completions, "rollout")
    trainer.training_step = timed(trainer.training_step, "train_step")
    trainer.train()
    lengths = [log["completions/mean_length"] for log in trainer.state.log_history if "completions/mean_length" in log]
    for phases, length in zip(clock.phases, lengths):
        phases["length"] = float(length)
    return {"clock": clock, "updates": trainer.state.global_step, "module_summary": None}


def read_spec(spec_path: str) -> dict:
    """A worker's run description, with the benchmark environment set before any library is imported."""
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    return json.loads(Path(spec_path).read_text())


def run_worker(spec_path: str, result_path: str) -> None:
    spec = read_spec(spec_path)
    library = CONFIGS[spec["name"]][0]
    out = (worker_ours if library == "ours" else worker_trl)(spec)
    clock: _Clock = out["clock"]
    warmup, steps = spec["warmup"], spec["steps"]
    seconds, cpu_seconds, step_seconds = clock.timed_window(spec["name"], warmup, steps)
    k = CONFIGS[spec["name"]][2]
    samples = steps * spec["prompts_per_step"] * k
    timed = list(range(warmup, warmup + steps))
    phases = {p: 0.0 for p in PHASES}
    for i in timed:
        ph = clock.phases[i]
        phases["generation"] += ph["generation"]
        phases["reward"] += ph["reward"]
        phases["logprobs"] += ph["rollout"] - ph["generation"] - ph["reward"]
        phases["update"] += ph["update"]
        phases["overhead"] += step_seconds[i] - ph["rollout"] - ph["update"]
    result = {
        "name": spec["name"], "library": library, "objective": CONFIGS[spec["name"]][1],
        "samples_per_second": samples / seconds, "timed_seconds": seconds, "timed_steps": steps,
        "samples_per_second_median_step": spec["prompts_per_step"] * k / statistics.median(step_seconds[warmup:]),
        "samples_per_cpu_second": samples / cpu_seconds, "timed_cpu_seconds": cpu_seconds,
        "setup_seconds": clock.start - WORKER_STARTED,
        "timed_samples": samples, "warmup_seconds": sum(step_seconds[:warmup]),
        "step_seconds": step_seconds, "optimizer_updates": out["updates"],
        "peak_rss_mb": _rss_peak_mb(), "rss_before_training_mb": clock.rss_at_start_mb,
        "phase_seconds_per_step": {p: v / steps for p, v in phases.items()},
        "mean_completion_length": statistics.fmean(clock.phases[i].get("length", 0.0) for i in timed),
        "module_summary": out["module_summary"],
    }
    Path(result_path).write_text(json.dumps(result, indent=2))


# ----------------------------------------------------------------------------- driver
def prepare_inputs(work: Path, n_prompts: int) -> tuple[Path, Path]:
    """A private copy of the task's SFT model and the first ``n_prompts`` training prompts."""
    sft = TASK_DIR / "sft"
    if not (sft / "config.json").exists() or not (TASK_DIR / "train.jsonl").exists():
        print(f"building the embedded task under {TASK_DIR} (first use only) ...", flush=True)
        from rlhf_lightning.tasks.summarize import build_task

        build_task(TASK_DIR, progress=False)
    model_dir = work / "model"
    shutil.copytree(sft, model_dir)
    prompts = []
    with open(TASK_DIR / "train.jsonl") as handle:
        for line in handle:
            prompts.append(json.dumps({"prompt": json.loads(line)["prompt"]}))
            if len(prompts) == n_prompts:
                break
    if len(prompts) < n_prompts:
        raise SystemExit(f"need {n_prompts} prompts, {TASK_DIR / 'train.jsonl'} has {len(prompts)}")
    prompts_file = work / "prompts.jsonl"
    prompts_file.write_text("\n".join(prompts) + "\n")
    return model_dir, prompts_file


def count_parameters(path: Path) -> int:
    """Parameters stored in a safetensors file (read from its header, without loading the weights)."""
    with open(path, "rb") as handle:
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    total = 0
    for key, entry in header.items():
        if key != "__metadata__":
            count = 1
            for dim in entry["shape"]:
                count *= dim
            total += count
    return total


def make_timer(current: dict[str, float]) -> Callable[[Callable, str], Callable]:
    """``timed(function, key)`` wraps ``function`` so that each call adds its seconds to ``current[key]``
    and records when it ended in ``current[key + "_end"]`` (for the TRL step breakdowns)."""
    def timed(function: Callable, key: str) -> Callable:
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                current[key + "_end"] = end = time.perf_counter()
                current[key] = current.get(key, 0.0) + end - start
        return wrapper
    return timed


def round_robin(names: list[str], repeats: int, work: Path, keep_work: bool, label: str,
                run: Callable[[str, int], dict]) -> dict[str, list[dict]]:
    """Every configuration once per repeat, in turn (so slow phases of a shared machine hit all of them);
    the work folder is removed afterwards unless ``keep_work``."""
    results: dict[str, list[dict]] = {name: [] for name in names}
    try:
        for repeat in range(repeats):
            print(f"repeat {repeat + 1}/{repeats}  (load average {os.getloadavg()[0]:.2f})", flush=True)
            for name in names:
                results[name].append(run(name, repeat))
    except BaseException:
        print(f"{label}: stopped; logs of the runs are in {work}", file=sys.stderr)
        raise
    if keep_work:
        print(f"run folders and logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return results


def run_config(name: str, base: dict, work: Path, repeat: int, script: Path = Path(__file__).resolve(),
               rate_key: str = "samples_per_second", unit: str = "samples/s") -> dict:
    """Run one configuration in a fresh process (``script --worker SPEC RESULT``) and read its result."""
    spec = {**base, "name": name, "run_dir": str(work / f"{name}_r{repeat}")}
    spec_path = work / f"{name}_r{repeat}.spec.json"
    result_path = work / f"{name}_r{repeat}.result.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, **ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    started = time.time()
    proc = subprocess.run([sys.executable, str(script), "--worker", str(spec_path), str(result_path)],
                          cwd=work, env=env, capture_output=True, text=True)
    (work / f"{name}_r{repeat}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-5000:]}")
    result = json.loads(result_path.read_text())
    print(f"  {name:<19} {result[rate_key]:7.1f} {unit}  peak {result['peak_rss_mb']:6.0f} MB  "
          f"updates {result['optimizer_updates']:>3}  ({time.time() - started:.0f} s)", flush=True)
    return result


def aggregate(results: dict[str, list[dict]]) -> dict[str, dict]:
    rows = {}
    for name, runs in results.items():
        sps = [r["samples_per_second"] for r in runs]
        median_run = sorted(runs, key=lambda r: r["samples_per_second"])[(len(runs) - 1) // 2]
        rows[name] = {
            "library": runs[0]["library"], "objective": runs[0]["objective"],
            "samples_per_second": statistics.median(sps), "samples_per_second_runs": sps,
            "samples_per_second_median_step": statistics.median(r["samples_per_second_median_step"] for r in runs),
            "samples_per_cpu_second": statistics.median(r["samples_per_cpu_second"] for r in runs),
            "setup_seconds": statistics.median(r["setup_seconds"] for r in runs),
            "seconds_per_step": statistics.median(r["timed_seconds"] / r["timed_steps"] for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "rss_before_training_mb": max(r["rss_before_training_mb"] for r in runs),
            "optimizer_updates": runs[0]["optimizer_updates"],
            "mean_completion_length": statistics.fmean(r["mean_completion_length"] for r in runs),
            "phase_seconds_per_step": median_run["phase_seconds_per_step"],
            "module_reported_samples_per_second": (median_run["module_summary"] or {}).get("samples_per_second"),
        }
    return rows


def ratios(rows: dict[str, dict]) -> list[dict]:
    out = []
    for ours, trl in RATIOS:
        if ours in rows and trl in rows:
            speed = rows[ours]["samples_per_second"] / rows[trl]["samples_per_second"]
            cpu = rows[ours]["samples_per_cpu_second"] / rows[trl]["samples_per_cpu_second"]
            typical = rows[ours]["samples_per_second_median_step"] / rows[trl]["samples_per_second_median_step"]
            out.append({"ours": ours, "trl": trl, "samples_per_second_ratio": speed,
                        "median_step_ratio": typical, "samples_per_cpu_second_ratio": cpu,
                        "peak_memory_ratio": rows[ours]["peak_rss_mb"] / rows[trl]["peak_rss_mb"],
                        "meets_target": speed >= TARGET})
    return out


def markdown(rows: dict, pairs: list[dict], meta: dict) -> str:
    lines = [
        "# rlhf_lightning vs TRL: online training throughput on CPU", "",
        f"{meta['steps']} timed steps after {meta['warmup']} warm-up step(s), {meta['prompts_per_step']} prompts × 2 "
        f"completions per step, max_new_tokens {meta['max_new_tokens']}, temperature 1.0, lr {meta['lr']}, "
        f"KL coefficient {meta['kl_coef']}, 1 optimizer update per rollout batch (4 for ours_rebel_4epochs), fp32. "
        f"Model: the embedded task's SFT Llama ({meta['model_parameters']:,} parameters). "
        f"Threads: OMP_NUM_THREADS=1 and torch.set_num_threads(1) for both libraries. "
        f"Median of {meta['repeats']} round-robin repeat(s). {meta['host']}; load average "
        f"{meta['load_before'][0]:.1f} before, {meta['load_after'][0]:.1f} after (other jobs on the machine make "
        f"timings noisy).", "",
        f"Versions: torch {meta['versions']['torch']}, transformers {meta['versions']['transformers']}, "
        f"lightning {meta['versions']['lightning']}, trl {meta['versions']['trl']}, "
        f"rlhf_lightning {meta['versions']['rlhf-lightning']}.", "",
        "| run | samples/s | samples/s at the median step | s/step | peak RSS (MB) | RSS before training (MB) | "
        "updates | mean completion length | setup s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        runs = ", ".join(f"{v:.0f}" for v in row["samples_per_second_runs"])
        sps = f"{row['samples_per_second']:.1f}" + (f" ({runs})" if len(row["samples_per_second_runs"]) > 1 else "")
        lines.append(f"| {name} | {sps} | {row['samples_per_second_median_step']:.1f} | {row['seconds_per_step']:.3f} | "
                     f"{row['peak_rss_mb']:.0f} | {row['rss_before_training_mb']:.0f} | {row['optimizer_updates']} | "
                     f"{row['mean_completion_length']:.2f} | {row['setup_seconds']:.0f} |")
    own = [f"{name} {row['module_reported_samples_per_second']:.0f}" for name, row in rows.items()
           if row["module_reported_samples_per_second"] is not None]
    if own:
        lines += ["", "Our module's own `summary.json` samples_per_second (generation + update time only, without "
                  "per-step logging and the trainer loop; not used above): " + ", ".join(own) + "."]
    lines += ["", f"Ratios ours / TRL (samples/s: > 1 means we are faster, target ≥ {TARGET}; peak memory: < 1 means "
              "we use less). The median-step ratio compares typical steps, so it is less sensitive to bursts of "
              "other jobs on the machine than the ratio of total times (the headline):", "",
              "| ours | vs TRL | samples/s ratio | median-step ratio | peak memory ratio | samples/s ≥ 1.2× |",
              "|---|---|---:|---:|---:|---|"]
    for p in pairs:
        lines.append(f"| {p['ours']} | {p['trl']} | {p['samples_per_second_ratio']:.2f}× | "
                     f"{p['median_step_ratio']:.2f}× | {p['peak_memory_ratio']:.2f}× | "
                     f"{'yes' if p['meets_target'] else 'no'} |")
    lines += ["", "Where a step's time goes (ms per step, median run; generation = `generate`; logprobs = the rest "
              "of the rollout: no-grad reference forward, no-grad policy forward where one is run, decoding, "
              "shaping (TRL: also prompt tokenisation); update = loss forward + "
              "backward + clipping + optimizer (with one update per rollout batch, our "
              "`old_logprobs_from_update` and TRL's GRPOTrainer take ln π_t from the update's own forward "
              "instead of a separate policy pass; TRL's RLOOTrainer runs the separate pass); overhead = the rest of the step's wall time: trainer loop, "
              "data loading, logging, callbacks):", "",
              "| run | " + " | ".join(PHASES) + " | total |", "|---|" + "---:|" * (len(PHASES) + 1)]
    for name, row in rows.items():
        ph = row["phase_seconds_per_step"]
        total = sum(ph.values())
        cells = " | ".join(f"{1000 * ph[p]:.0f} ({100 * ph[p] / total:.0f}%)" for p in PHASES)
        lines.append(f"| {name} | {cells} | {1000 * total:.0f} |")
    lines += ["", "Configuration notes: TRL runs with `use_cpu=True, bf16=False, gradient_checkpointing=False, "
              "optim='adamw_torch', steps_per_generation=1, num_iterations=1, per_device_train_batch_size="
              "prompts×2` (it counts completions), `shuffle_dataset=False`, `report_to='none'`, its printer and "
              "progress callbacks removed; ours with `cpu_threads: 1`, CSVLogger, no progress bar, no checkpoint, "
              "no evaluation callback, `data.shuffle: false`, `no_eos_reward: null`. trl_grpo uses beta = the KL "
              "coefficient (reference model on, like ours); trl_grpo_beta0 is TRL's default beta = 0 (no reference "
              "forward), for information. Reward: `overlap_reward` in this file, the same function on both sides.", ""]
    return "\n".join(lines)


def versions() -> dict:
    out = {}
    for package in ("torch", "transformers", "lightning", "trl", "rlhf-lightning", "accelerate", "datasets"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        run_worker(argv[1], argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50, help="timed rollout batches per run (default 50)")
    parser.add_argument("--prompts-per-step", type=int, default=16,
                        help="prompts per rollout batch; 2 completions each (default 16)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rollout batches first (default 1)")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--kl-coef", type=float, default=0.05, help="our γ and TRL's beta (default 0.05)")
    parser.add_argument("--repeats", type=int, default=3, help="round-robin repeats; median reported (default 3)")
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where vs_trl.{md,json} go")
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary run folder (logs, CSVs)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.prompts_per_step < 1 or args.warmup < 0 or args.repeats < 1:
        parser.error("--steps, --prompts-per-step and --repeats must be ≥ 1, --warmup ≥ 0")
    if any(CONFIGS[n][0] == "trl" for n in args.only) and importlib.util.find_spec("trl") is None:
        raise SystemExit("benchmarks/vs_trl.py compares against TRL, which is not installed. TRL is an optional "
                         "benchmark dependency only: pip install trl")

    work = Path(tempfile.mkdtemp(prefix="vs_trl_"))
    model_dir, prompts_file = prepare_inputs(work, (args.warmup + args.steps) * args.prompts_per_step)
    parameters = count_parameters(model_dir / "model.safetensors")
    base = {"model_dir": str(model_dir), "prompts_file": str(prompts_file), "steps": args.steps,
            "warmup": args.warmup, "prompts_per_step": args.prompts_per_step, "max_new_tokens": args.max_new_tokens,
            "lr": args.lr, "kl_coef": args.kl_coef}
    print(f"vs_trl: {args.steps} timed steps (+{args.warmup} warm-up) × {args.prompts_per_step} prompts × 2 "
          f"completions, max_new_tokens {args.max_new_tokens}, {args.repeats} repeat(s); work dir {work}", flush=True)
    load_before = os.getloadavg()
    started = time.time()
    results = round_robin(args.only, args.repeats, work, args.keep_work, "vs_trl",
                          lambda name, repeat: run_config(name, base, work, repeat))
    rows = aggregate(results)
    pairs = ratios(rows)
    meta = {**base, "repeats": args.repeats, "model_parameters": parameters, "versions": versions(),
            **host_meta(load_before, started),
            "timing": "wall clock from the end of the last warm-up step to the end of the last step; "
                      "samples = generated completions; peak memory = ru_maxrss of the run's own process"}
    meta.pop("model_dir"), meta.pop("prompts_file")
    write_report(args.out, "vs_trl", {"meta": meta, "rows": rows, "ratios": pairs, "runs": results},
                 markdown(rows, pairs, meta), started)


def host_meta(load_before: tuple[float, float, float], started: float) -> dict:
    """Where and under what load a benchmark ran (for its report's ``meta``)."""
    return {"host": f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
            "threads": "OMP_NUM_THREADS=1, torch.set_num_threads(1) on both sides",
            "load_before": load_before, "load_after": os.getloadavg(), "wall_seconds": time.time() - started}


def write_report(out: Path, stem: str, report: dict, text: str, started: float) -> None:
    """``<out>/<stem>.json`` (the report) and ``<out>/<stem>.md`` (its text), and the text on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (out / f"{stem}.md").write_text(text)
    print()
    print(text)
    print(f"wrote {out / f'{stem}.md'} and {out / f'{stem}.json'} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
