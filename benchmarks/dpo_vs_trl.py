"""Offline DPO throughput and peak memory of rlhf_lightning against TRL's DPOTrainer, on the same tiny CPU workload.

Trains, one after the other and each in its own process (so peak RSS is per configuration):

    ours                 rlhf_lightning RLHFModule + objectives.DPO (the settings of recipes/dpo.yaml)
    ours_precompute      the same with model.init_args.precompute_reference: true
    trl                  trl.DPOTrainer, loss_type sigmoid, precompute_ref_log_probs=False
    trl_precompute       trl.DPOTrainer with precompute_ref_log_probs=True

on the embedded task's SFT Llama (copied to a temporary folder), the first ``(warmup + steps) × pairs``
preference pairs of ``runs/.cache/summarize/preferences-noise0.1-seed0/train.jsonl`` (prompt / chosen /
rejected text) in file order (no shuffling on either side), the same pairs per optimizer step, DPO β = 0.05,
lr 3e-4 with linear decay to 0 over the run, AdamW (weight decay 0), gradient clipping at norm 1.0, fp32, no
gradient checkpointing, the same tokenizer. Length limits: ours drops prompts > 64 tokens and responses
> 32 tokens (EOS included), as the embedded task's data module does; TRL 1.16 has no max_prompt_length,
so it gets ``max_length = 96`` (= 64 + 32; no row of the task reaches it, so neither side truncates)::

    python benchmarks/dpo_vs_trl.py                          # ≈ 3 min on 2 CPU cores
    python benchmarks/dpo_vs_trl.py --steps 60 --pairs-per-step 32 --repeats 5 --out benchmarks/results  # ≈ 6 min
    python benchmarks/dpo_vs_trl.py --only ours ours_precompute    # our rows only (no TRL needed)

TRL is an optional benchmark dependency (``pip install trl datasets``); the library never imports it.

Timing: every run does ``--warmup`` optimizer steps first (not timed: lazy initialisation, first
allocations), then ``--steps`` timed ones. The timed wall clock runs from the end of the last warm-up step
to the end of the last step, measured by a callback at the end of each step (Lightning's
``on_train_batch_end``, transformers' ``on_step_end``), so it covers everything a step costs: data
loading and collation, reference forward, policy forward/backward, clipping, optimizer, scheduler,
logging and the trainer's own loop. Model loading and dataset tokenisation are excluded. The reference
precompute of the ``*_precompute`` rows is excluded too (TRL does it in ``DPOTrainer.__init__``, ours in
``on_train_start``, i.e. before the first, untimed warm-up step); its seconds are reported in their own
column and in "pairs/s incl. precompute" (timed pairs / (timed seconds + precompute seconds × timed
pairs / precomputed pairs), i.e. its cost per pair amortised over the timed pairs). pairs/s = preference
pairs in the timed steps / timed seconds; sequences/s = 2 × pairs/s. Peak memory is the process's peak
RSS (``ru_maxrss``: imports + models + training). Both libraries run with ``OMP_NUM_THREADS=1`` and
``torch.set_num_threads(1)``. With ``--repeats R`` the configurations run round-robin R times and the
table shows the median (and the largest peak RSS).

The step breakdown (reference forward / policy update / framework overhead) comes from timing wrappers
around ``RLHFModule.reference_logprobs`` and forward hooks on TRL's ``ref_model`` and from our module's own
busy-time counter / TRL's ``training_step`` (the library code is not changed). Helpers shared with the
online comparison are imported from ``benchmarks/vs_trl.py``. Results: ``<out>/dpo_vs_trl.md`` and
``<out>/dpo_vs_trl.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

WORKER_STARTED = time.perf_counter()  # in a worker: before torch and the libraries are imported
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
sys.dont_write_bytecode = True  # no __pycache__ next to the benchmarks from `import vs_trl`

import vs_trl  # noqa: E402
from vs_trl import TASK_DIR, _Clock, _rss_peak_mb, _single_thread, count_parameters, versions  # noqa: E402

PREFERENCES = TASK_DIR / "preferences-noise0.1-seed0" / "train.jsonl"
MAX_PROMPT, MAX_RESPONSE = 64, 32  # the embedded task's limits (SummarizePreferenceData)
# name -> (library, precompute the reference log-probs)
CONFIGS = {
    "ours": ("ours", False),
    "ours_precompute": ("ours", True),
    "trl": ("trl", False),
    "trl_precompute": ("trl", True),
}
RATIOS = [("ours", "trl"), ("ours_precompute", "trl_precompute"), ("ours_precompute", "trl")]
TARGET = 1.0  # "at least as fast"
PHASES = ("reference", "update", "overhead")


def __getattr__(name: str):
    # built on first use (jsonargparse imports it as dpo_vs_trl.DPOStepClock), so that the TRL workers
    # never import Lightning and their memory is TRL's alone
    if name == "DPOStepClock":
        from lightning.pytorch import Callback

        class DPOStepClock(Callback):
            """Records the end of every training batch, the module's busy time and the reference forwards."""

            def __init__(self) -> None:
                self.clock = _Clock()
                self.busy = 0.0
                self.reference = 0.0
                self.precompute_seconds = 0.0
                self.widths: list[int] = []
                self.tokens: list[float] = []

            def on_train_start(self, trainer, pl_module) -> None:
                # callbacks' on_train_start runs before the module's, which builds the reference cache
                import rlhf_lightning.module as module_file

                clock, cache = self, module_file.ReferenceCache
                original_build, original_ref = cache.build.__func__, pl_module.reference_logprobs

                def build(cls, *args, **kwargs):
                    start = time.perf_counter()
                    try:
                        return original_build(cls, *args, **kwargs)
                    finally:
                        clock.precompute_seconds += time.perf_counter() - start

                def reference_logprobs(*args, **kwargs):
                    start = time.perf_counter()
                    try:
                        return original_ref(*args, **kwargs)
                    finally:
                        clock.reference += time.perf_counter() - start

                cache.build = classmethod(build)
                pl_module.reference_logprobs = reference_logprobs
                self.clock.begin()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                busy = pl_module._busy_seconds
                update, self.busy = busy - self.busy, busy
                self.widths.append(int(batch.attention_mask.shape[1]))
                self.tokens.append(float(batch.attention_mask.sum()) / len(batch.attention_mask))
                self.clock.end_step({"reference": self.reference, "update": update - self.reference})
                self.reference = 0.0

        globals()["DPOStepClock"] = DPOStepClock
        return DPOStepClock
    raise AttributeError(name)


# ----------------------------------------------------------------------------- workers
def worker_ours(spec: dict) -> dict:
    _single_thread()
    from rlhf_lightning.cli import RLHFCLI

    model, root = spec["model_dir"], spec["run_dir"]
    precompute = CONFIGS[spec["name"]][1]
    # recipes/dpo.yaml + base/offline_trainer.yaml, with the data module pointed at the benchmark's pairs
    # and no logger / evaluation / checkpoint / export callbacks
    args = [
        "fit", "--seed_everything", "0", "--cpu_threads", "1",
        "--model", "rlhf_lightning.RLHFModule", "--model.policy.path", model,
        "--model.lr", str(spec["lr"]), "--model.lr_schedule", "linear", "--model.max_grad_norm", "1.0",
        "--model.precompute_reference", "true" if precompute else "false",
        "--model.objective", "rlhf_lightning.objectives.DPO", "--model.objective.beta", str(spec["beta"]),
        "--model.objective.label_smoothing", "0.0", "--model.objective.length_normalized", "false",
        "--model.objective.reference_free", "false",
        "--data", "rlhf_lightning.data.PreferenceDataModule", "--data.train_file", spec["pairs_file"],
        "--data.tokenizer", model, "--data.batch_size", str(spec["pairs_per_step"]), "--data.shuffle", "false",
        "--data.max_prompt_length", str(MAX_PROMPT), "--data.max_response_length", str(MAX_RESPONSE),
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(spec["warmup"] + spec["steps"]),
        "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
        "--trainer.log_every_n_steps", "1", "--trainer.logger", "false",
        "--trainer.default_root_dir", root, "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.enable_checkpointing", "false",
        "--trainer.callbacks+=dpo_vs_trl.DPOStepClock",
    ]
    cli = RLHFCLI(args=args)
    callback = next(c for c in cli.trainer.callbacks if type(c).__name__ == "DPOStepClock")
    return {"clock": callback.clock, "updates": cli.trainer.global_step, "widths": callback.widths,
            "tokens": callback.tokens, "precompute_seconds": callback.precompute_seconds,
            "precomputed_pairs": len(cli.datamodule.splits["train"]) if precompute else 0}


def worker_trl(spec: dict) -> dict:
    _single_thread()
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import DPOConfig, DPOTrainer

    precompute = CONFIGS[spec["name"]][1]
    rows = [json.loads(line) for line in Path(spec["pairs_file"]).read_text().splitlines() if line.strip()]
    dataset = Dataset.from_list([{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in rows])
    config = DPOConfig(
        output_dir=spec["run_dir"], seed=0, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        per_device_train_batch_size=spec["pairs_per_step"], gradient_accumulation_steps=1,
        max_length=MAX_PROMPT + MAX_RESPONSE, beta=spec["beta"], loss_type=["sigmoid"], label_smoothing=0.0,
        precompute_ref_log_probs=precompute, learning_rate=spec["lr"], lr_scheduler_type="linear", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", max_steps=spec["warmup"] + spec["steps"],
        train_sampling_strategy="sequential", disable_dropout=True, logging_steps=1, report_to="none",
        save_strategy="no", eval_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )
    clock = _Clock()
    current: dict[str, float] = {}
    extra = {"widths": [], "tokens": [], "precompute_seconds": 0.0}

    timed = vs_trl.make_timer(current)

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.begin()

        def on_step_end(self, args, state, control, **kwargs):
            # update = training_step (forward, loss, backward) minus its reference forward + what the loop
            # does between training_step and on_step_end: clipping, optimizer, scheduler, zero_grad
            after_step = time.perf_counter() - current.get("train_step_end", time.perf_counter())
            reference = current.get("reference", 0.0)
            update = current.get("train_step", 0.0) - reference + after_step
            clock.end_step({"reference": reference, "update": update})
            current.clear()

    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    original_precompute = DPOTrainer._precompute_ref_logps

    def precompute_ref_logps(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original_precompute(self, *args, **kwargs)
        finally:
            extra["precompute_seconds"] += time.perf_counter() - start

    DPOTrainer._precompute_ref_logps = precompute_ref_logps  # runs inside __init__
    trainer = DPOTrainer(model=spec["model_dir"], args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[Clock()])
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if trainer.ref_model is not None:  # TRL 1.16 calls self.ref_model(...) inside _compute_loss: time its forward
        marks: list[float] = []
        trainer.ref_model.register_forward_pre_hook(lambda *_: marks.append(time.perf_counter()))
        trainer.ref_model.register_forward_hook(
            lambda *_: current.__setitem__("reference",
                                           current.get("reference", 0.0) + time.perf_counter() - marks.pop()))
    original_step = trainer.training_step

    def training_step(model, inputs, *args, **kwargs):
        mask = inputs["attention_mask"]
        extra["widths"].append(int(mask.shape[1]))
        extra["tokens"].append(float(mask.sum()) / len(mask))
        return original_step(model, inputs, *args, **kwargs)

    trainer.training_step = timed(training_step, "train_step")
    trainer.train()
    return {"clock": clock, "updates": trainer.state.global_step, **extra,
            "precomputed_pairs": len(trainer.train_dataset) if precompute else 0}


def run_worker(spec_path: str, result_path: str) -> None:
    spec = vs_trl.read_spec(spec_path)
    library = CONFIGS[spec["name"]][0]
    out = (worker_ours if library == "ours" else worker_trl)(spec)
    clock: _Clock = out["clock"]
    warmup, steps, pairs = spec["warmup"], spec["steps"], spec["pairs_per_step"]
    seconds, cpu_seconds, step_seconds = clock.timed_window(spec["name"], warmup, steps)
    timed = range(warmup, warmup + steps)
    phases = {p: 0.0 for p in PHASES}
    for i in timed:
        ph = clock.phases[i]
        phases["reference"] += ph["reference"]
        phases["update"] += ph["update"]
        phases["overhead"] += step_seconds[i] - ph["reference"] - ph["update"]
    timed_pairs = steps * pairs
    precompute = out["precompute_seconds"]
    amortised = precompute * timed_pairs / out["precomputed_pairs"] if out["precomputed_pairs"] else 0.0
    result = {
        "name": spec["name"], "library": library, "precompute_reference": CONFIGS[spec["name"]][1],
        "pairs_per_second": timed_pairs / seconds, "timed_seconds": seconds, "timed_steps": steps,
        "pairs_per_second_median_step": pairs / statistics.median(step_seconds[warmup:]),
        "pairs_per_cpu_second": timed_pairs / cpu_seconds, "timed_cpu_seconds": cpu_seconds,
        "precompute_seconds": precompute, "precomputed_pairs": out["precomputed_pairs"],
        "pairs_per_second_incl_precompute": timed_pairs / (seconds + amortised),
        "setup_seconds": clock.start - WORKER_STARTED, "warmup_seconds": sum(step_seconds[:warmup]),
        "step_seconds": step_seconds, "optimizer_updates": out["updates"],
        "peak_rss_mb": _rss_peak_mb(), "rss_before_training_mb": clock.rss_at_start_mb,
        "phase_seconds_per_step": {p: v / steps for p, v in phases.items()},
        "mean_padded_width": statistics.fmean(out["widths"][i] for i in timed),
        "mean_tokens_per_sequence": statistics.fmean(out["tokens"][i] for i in timed),
    }
    Path(result_path).write_text(json.dumps(result, indent=2))


# ----------------------------------------------------------------------------- driver
def prepare_inputs(work: Path, n_pairs: int) -> tuple[Path, Path]:
    """A private copy of the task's SFT model and the first ``n_pairs`` preference pairs that fit the limits."""
    sft = TASK_DIR / "sft"
    if not (sft / "config.json").exists() or not PREFERENCES.exists():
        raise SystemExit(f"the embedded task's SFT model or preference pairs are missing under {TASK_DIR}; build "
                         "them first, e.g. by running recipes/dpo.yaml once (rlhf-lightning run recipes/dpo.yaml)")
    model_dir = work / "model"
    shutil.copytree(sft, model_dir)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pairs = []
    with open(PREFERENCES) as handle:
        for line in handle:
            row = json.loads(line)
            prompt = len(tokenizer(row["prompt"])["input_ids"])
            responses = [len(tokenizer(row[k], add_special_tokens=False)["input_ids"]) + 1  # + EOS
                         for k in ("chosen", "rejected")]
            empty = not row["chosen"].strip() or not row["rejected"].strip()
            if prompt > MAX_PROMPT or max(responses) > MAX_RESPONSE or empty:
                continue  # both sides then train on exactly the same rows
            pairs.append(json.dumps({k: row[k] for k in ("prompt", "chosen", "rejected")}))
            if len(pairs) == n_pairs:
                break
    if len(pairs) < n_pairs:
        raise SystemExit(f"need {n_pairs} preference pairs, {PREFERENCES} has {len(pairs)} usable ones")
    pairs_file = work / "pairs.jsonl"
    pairs_file.write_text("\n".join(pairs) + "\n")
    return model_dir, pairs_file


def run_config(name: str, base: dict, work: Path, repeat: int) -> dict:
    """One configuration in its own process (the runner of ``vs_trl.py``, with this file as the worker)."""
    return vs_trl.run_config(name, base, work, repeat, script=Path(__file__).resolve(),
                             rate_key="pairs_per_second", unit="pairs/s")


def aggregate(results: dict[str, list[dict]]) -> dict[str, dict]:
    rows = {}
    for name, runs in results.items():
        pps = [r["pairs_per_second"] for r in runs]
        median_run = sorted(runs, key=lambda r: r["pairs_per_second"])[(len(runs) - 1) // 2]
        med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
        rows[name] = {
            "library": runs[0]["library"], "precompute_reference": runs[0]["precompute_reference"],
            "pairs_per_second": statistics.median(pps), "pairs_per_second_runs": pps,
            "sequences_per_second": 2 * statistics.median(pps),
            "pairs_per_second_median_step": med("pairs_per_second_median_step"),
            "pairs_per_cpu_second": med("pairs_per_cpu_second"),
            "pairs_per_second_incl_precompute": med("pairs_per_second_incl_precompute"),
            "precompute_seconds": med("precompute_seconds"), "precomputed_pairs": runs[0]["precomputed_pairs"],
            "seconds_per_step": statistics.median(r["timed_seconds"] / r["timed_steps"] for r in runs),
            "setup_seconds": med("setup_seconds"),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "rss_before_training_mb": max(r["rss_before_training_mb"] for r in runs),
            "optimizer_updates": runs[0]["optimizer_updates"],
            "mean_padded_width": runs[0]["mean_padded_width"],
            "mean_tokens_per_sequence": runs[0]["mean_tokens_per_sequence"],
            "phase_seconds_per_step": median_run["phase_seconds_per_step"],
        }
    return rows


def ratios(rows: dict[str, dict]) -> list[dict]:
    out = []
    for ours, trl in RATIOS:
        if ours in rows and trl in rows:
            speed = rows[ours]["pairs_per_second"] / rows[trl]["pairs_per_second"]
            out.append({"ours": ours, "trl": trl, "pairs_per_second_ratio": speed,
                        "median_step_ratio": rows[ours]["pairs_per_second_median_step"]
                        / rows[trl]["pairs_per_second_median_step"],
                        "pairs_per_cpu_second_ratio": rows[ours]["pairs_per_cpu_second"]
                        / rows[trl]["pairs_per_cpu_second"],
                        "incl_precompute_ratio": rows[ours]["pairs_per_second_incl_precompute"]
                        / rows[trl]["pairs_per_second_incl_precompute"],
                        "peak_memory_ratio": rows[ours]["peak_rss_mb"] / rows[trl]["peak_rss_mb"],
                        "meets_target": speed >= TARGET})
    return out


def markdown(rows: dict, pairs: list[dict], meta: dict) -> str:
    v = meta["versions"]
    lines = [
        "# rlhf_lightning vs TRL: offline DPO throughput on CPU", "",
        f"{meta['steps']} timed optimizer steps after {meta['warmup']} warm-up step(s), {meta['pairs_per_step']} "
        f"preference pairs ({2 * meta['pairs_per_step']} sequences) per step, the first "
        f"{(meta['warmup'] + meta['steps']) * meta['pairs_per_step']} pairs of the embedded task's "
        f"preferences-noise0.1-seed0/train.jsonl in file order, prompts ≤ {MAX_PROMPT} tokens, responses ≤ "
        f"{MAX_RESPONSE} (TRL: max_length {MAX_PROMPT + MAX_RESPONSE}), DPO sigmoid loss β {meta['beta']}, lr "
        f"{meta['lr']} linear, AdamW, clip 1.0, fp32. Model: the embedded task's SFT Llama "
        f"({meta['model_parameters']:,} parameters). Threads: OMP_NUM_THREADS=1 and torch.set_num_threads(1) for "
        f"both libraries. Median of {meta['repeats']} round-robin repeat(s). {meta['host']}; load average "
        f"{meta['load_before'][0]:.2f} before, {meta['load_after'][0]:.2f} after (shared machine: other jobs make "
        "timings noisy).", "",
        f"Versions: torch {v['torch']}, transformers {v['transformers']}, lightning {v['lightning']}, trl {v['trl']}, "
        f"datasets {v['datasets']}, rlhf_lightning {v['rlhf-lightning']}.", "",
        "Timed: the training loop only, from the end of the last warm-up step to the end of the last step (step-end "
        "callbacks on both sides); model loading, dataset tokenisation and the reference precompute are excluded "
        "(the precompute is shown apart and amortised in \"pairs/s incl. precompute\").", "",
        "| run | pairs/s (runs) | sequences/s | pairs/s at the median step | pairs per CPU-second | s/step | "
        "pairs/s incl. precompute | precompute s | peak RSS (MB) | RSS before training (MB) | padded width | "
        "tokens/seq | setup s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        runs = ", ".join(f"{x:.1f}" for x in row["pairs_per_second_runs"])
        pre = f"{row['precompute_seconds']:.2f} ({row['precomputed_pairs']} pairs)" if row["precomputed_pairs"] else "–"
        lines.append(
            f"| {name} | {row['pairs_per_second']:.1f} ({runs}) | {row['sequences_per_second']:.1f} | "
            f"{row['pairs_per_second_median_step']:.1f} | {row['pairs_per_cpu_second']:.1f} | {row['seconds_per_step']:.3f} | "
            f"{row['pairs_per_second_incl_precompute']:.1f} | {pre} | {row['peak_rss_mb']:.0f} | "
            f"{row['rss_before_training_mb']:.0f} | {row['mean_padded_width']:.1f} | "
            f"{row['mean_tokens_per_sequence']:.1f} | {row['setup_seconds']:.1f} |")
    lines += ["", f"Ratios ours / TRL (pairs/s: > 1 means we are faster, target ≥ {TARGET}; peak memory: < 1 means we "
              "use less). pairs per CPU-second (timed pairs / the process's CPU time over the timed steps) is the least "
              "sensitive to other jobs on a shared machine: time a process spends descheduled counts in wall time "
              "but not in CPU time.", "",
              "| ours | vs TRL | pairs/s ratio | median-step ratio | per-CPU-second ratio | incl. precompute ratio | "
              "peak memory ratio | at least as fast |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
    for p in pairs:
        lines.append(f"| {p['ours']} | {p['trl']} | {p['pairs_per_second_ratio']:.2f}× | {p['median_step_ratio']:.2f}× | "
                     f"{p['pairs_per_cpu_second_ratio']:.2f}× | {p['incl_precompute_ratio']:.2f}× | "
                     f"{p['peak_memory_ratio']:.2f}× | {'yes' if p['meets_target'] else 'no'} |")
    lines += ["", "Where a step's time goes (ms per step, median run; reference = the no-grad reference forward "
              "(0 with precompute); update = policy forward + loss + backward + clipping + optimizer + scheduler; "
              "overhead = the rest of the step's wall time: data loading/collation, trainer loop, logging, callbacks):",
              "", "| run | " + " | ".join(PHASES) + " | total |", "|---|" + "---:|" * (len(PHASES) + 1)]
    for name, row in rows.items():
        ph = row["phase_seconds_per_step"]
        total = sum(ph.values())
        cells = " | ".join(f"{1000 * ph[p]:.0f} ({100 * ph[p] / total:.0f}%)" for p in PHASES)
        lines.append(f"| {name} | {cells} | {1000 * total:.0f} |")
    lines += ["", "Configuration notes: TRL runs `DPOConfig(use_cpu=True, bf16=False, gradient_checkpointing=False, "
              "loss_type=['sigmoid'], max_length=96, train_sampling_strategy='sequential', optim='adamw_torch', "
              "report_to='none', save_strategy='no')` with its printer and progress callbacks removed and the model "
              "given as a path (TRL loads the policy and a reference copy); ours runs RLHFCLI with the settings of "
              "recipes/dpo.yaml on `rlhf_lightning.data.PreferenceDataModule` over the same pairs file "
              "(`shuffle: false`), `cpu_threads: 1`, no logger, no progress bar, no checkpoint, no evaluation or "
              "export callback. Padded width differs by design: ours left-pads prompts and right-pads responses "
              "(width = longest prompt + longest response), TRL right-pads whole sequences; TRL tokenises "
              "prompt + response as one string, ours separately.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        run_worker(argv[1], argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per run (default 30)")
    parser.add_argument("--pairs-per-step", type=int, default=32,
                        help="preference pairs per optimizer step (default 32, as recipes/dpo.yaml)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--lr", type=float, default=3e-4, help="learning rate (default 3e-4, as recipes/dpo.yaml)")
    parser.add_argument("--beta", type=float, default=0.05, help="DPO β (default 0.05, as recipes/dpo.yaml)")
    parser.add_argument("--repeats", type=int, default=3, help="round-robin repeats; median reported (default 3)")
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where dpo_vs_trl.{md,json} go")
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary run folder (logs)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.pairs_per_step < 1 or args.warmup < 0 or args.repeats < 1:
        parser.error("--steps, --pairs-per-step and --repeats must be ≥ 1, --warmup ≥ 0")
    if any(CONFIGS[n][0] == "trl" for n in args.only):
        missing = [m for m in ("trl", "datasets") if importlib.util.find_spec(m) is None]
        if missing:
            raise SystemExit(f"benchmarks/dpo_vs_trl.py compares against TRL's DPOTrainer, but {', '.join(missing)} "
                             "is not installed. TRL is an optional benchmark dependency only: pip install trl datasets "
                             "(or run just our rows: --only ours ours_precompute)")

    work = Path(tempfile.mkdtemp(prefix="dpo_vs_trl_"))
    model_dir, pairs_file = prepare_inputs(work, (args.warmup + args.steps) * args.pairs_per_step)
    base = {"model_dir": str(model_dir), "pairs_file": str(pairs_file), "steps": args.steps, "warmup": args.warmup,
            "pairs_per_step": args.pairs_per_step, "lr": args.lr, "beta": args.beta}
    print(f"dpo_vs_trl: {args.steps} timed steps (+{args.warmup} warm-up) × {args.pairs_per_step} pairs, "
          f"{args.repeats} repeat(s); work dir {work}", flush=True)
    load_before = os.getloadavg()
    started = time.time()
    results = vs_trl.round_robin(args.only, args.repeats, work, args.keep_work, "dpo_vs_trl",
                                 lambda name, repeat: run_config(name, base, work, repeat))
    rows = aggregate(results)
    pairs = ratios(rows)
    parameters = count_parameters(TASK_DIR / "sft" / "model.safetensors")
    meta = {**base, "repeats": args.repeats, "model_parameters": parameters,
            "versions": versions(), "max_prompt_length": MAX_PROMPT, "max_response_length": MAX_RESPONSE,
            **vs_trl.host_meta(load_before, started),
            "timing": "wall clock from the end of the last warm-up step to the end of the last step; model loading, "
                      "tokenisation and reference precompute excluded; peak memory = ru_maxrss of the run's process"}
    meta.pop("model_dir"), meta.pop("pairs_file")
    vs_trl.write_report(args.out, "dpo_vs_trl", {"meta": meta, "rows": rows, "ratios": pairs, "runs": results},
                        markdown(rows, pairs, meta), started)


if __name__ == "__main__":
    main()
