"""Throughput, peak memory and FLOP efficiency of our online trainers against TRL's, on the same CPU workload.

Trains, one after the other and each in its own process (so peak RSS is per configuration):

    ours_rebel          rlhf_lightning REBEL, 1 inner epoch (1 optimizer update per rollout batch)
    ours_rebel_4epochs  REBEL with its default 4 inner epochs (4 updates per rollout batch; extra row)
    ours_rloo_k2        rlhf_lightning RLOO, k = 2
    trl_rloo_k2         trl.RLOOTrainer, num_generations = 2
    trl_grpo            trl.GRPOTrainer, num_generations = 2, beta = kl_coef (KL to a reference, like ours)
    trl_grpo_beta0      trl.GRPOTrainer with TRL's default beta = 0 (no reference model; extra row)

on the same local model, the same prompts in the same order, the same number of prompts per step,
2 completions per prompt, the same ``max_new_tokens``, temperature 1.0, the same learning rate /
schedule / clipping, the same KL coefficient and the same Python reward function
(:func:`overlap_reward`), fp32, no gradient checkpointing, and 1 optimizer update per rollout batch
(except ``ours_rebel_4epochs``)::

    python benchmarks/vs_trl.py                          # the embedded SFT Llama; ≈ 5 min on 2 idle CPU cores
    python benchmarks/vs_trl.py --steps 100 --prompts-per-step 16 --repeats 5 --out benchmarks/results
    python benchmarks/vs_trl.py --only ours_rloo_k2 trl_rloo_k2
    python benchmarks/vs_trl.py --model 27m --vocab 32000 --threads 2     # → vs_trl_27m_v32000_t2.{md,json}
    python benchmarks/vs_trl.py --hidden 384 --layers 6 --vocab 8192      # a custom shape (h384l6)
    python benchmarks/vs_trl.py --summary                # all <out>/vs_trl*.json → <out>/vs_trl_sizes.md

TRL is an optional benchmark dependency (``pip install trl``); the library itself never imports it.

Models. ``--model sft`` (the default) is the embedded task's 137K-parameter SFT Llama (word-level
tokenizer, copied to a temporary folder). ``--model 3m`` (hidden 256, 4 layers) and ``--model 27m``
(hidden 512, 8 layers), or ``--hidden/--layers/--heads/--intermediate``, build a *random-init*
``LlamaForCausalLM`` (seed ``--seed``, head dim 64, intermediate = 8/3·hidden rounded to a multiple of
64, untied lm_head, fp32, ``save_pretrained`` as safetensors into the work folder) with a byte-level
BPE tokenizer trained locally (``tokenizers``) to exactly ``--vocab`` tokens: ``<bos>``, ``<eos>``
(and ``<pad>`` with ``--pad-token own``), the characters of the corpus (the full 256-byte alphabet
from 512 tokens on), then merges. The corpus is the task's prompts and references plus 2·vocab
procedurally generated pseudo-words (syllables drawn from a seeded RNG, each word ≥ 2 times with
Zipf-like counts), so that even 32000 merges are reachable; the vocabulary size reached is checked
and reported. The tokenizer adds ``<bos>`` in front of a text (Llama style); the model's
``vocab_size`` = ``len(tokenizer)`` and its config and generation config carry the same bos / eos /
pad ids (no sampling settings). Prompts are always the embedded task's training prompts
(``runs/.cache/summarize/train.jsonl``, or generated in memory with the same seed when the task has
not been built: the SFT model is only built for ``--model sft``).

Same work on both sides. On a random-init model almost every response runs until it samples an EOS,
so the mean length measures how many ids end a response: with ``p`` = the chance of sampling one
of them per token, E[length] = (1 − (1 − p)^max_new_tokens) / p. With such models the issue saw TRL
at 43.8 tokens and ours at 37.7 on the same prompts and weights. Checked here (prompt ids tokenised
both ways, the EOS sets and logits processors that each side's ``generate`` really runs with, the
lengths counted by one rule), the cause is the pad token: a tokenizer with a pad token of its own,
which a random model samples as often as any other token. TRL stops only at its EOS set (tokenizer
EOS ∪ ``generation_config.eos_token_id``) and counts a sampled pad as an ordinary completion token;
our response mask (``rlhf_lightning/generation/masks.py``) ends a response at the first sampled pad
(as a response without EOS), so our responses end at two ids and TRL's at one. For a uniform
sampler over 141 tokens and 48 new tokens the formula gives 35.0 vs 40.8 (ratio 1.17; the issue's
43.8 / 37.7 = 1.16); measured with ``--model 3m --vocab 141 --pad-token own --max-new-tokens 48``:
ours 32.8 by its own count (36.9 counted to the first EOS, as TRL does), TRL 37.1. Not the cause:
prompt encoding (both call the tokenizer with its special tokens: the same ids, BOS first; no chat
template, no truncation), the EOS set (ours: tokenizer EOS ∪ generation config EOS ∪ chat-template
end-of-turn; the same ids here), sampling (both run temperature 1, top_k = 0, top_p = 1: no top-k /
top-p processor, and the checkpoint's generation config sets no sampling; our ``generate`` also
gets a ``MinLengthLogitsProcessor`` from ``min_new_tokens=0`` whose min_length is the prompt width,
a no-op on the distribution), counting (both count the EOS token). The fix: the built tokenizers pad
with ``<eos>`` (as Llama-3 checkpoints do and TRL's default is; ``--pad-token own`` brings the
separate pad back to reproduce the difference). The workers record at every ``generate`` call the
real prompt ids (a digest per step, compared between runs), the prompt widths, the EOS set and the
logits processors in use, and count every response's length by one rule (up to and including the
first token of the shared EOS set): the report's "same count" column, next to each library's own.

Timing: every run does ``--warmup`` rollout batches first (not timed: lazy initialisation, first
``generate``), then ``--steps`` timed ones. The timed wall clock runs from the end of the last warm-up
step to the end of the last step, measured by a callback at the end of each step (Lightning's
``on_train_batch_end``, transformers' ``on_step_end``), so it covers everything a step costs:
prompt loading, generation, log-prob passes, reward, backward, optimizer, logging and the trainer's
own overhead. Model loading is excluded. ``samples/s`` = generated completions in the timed steps /
timed seconds; "samples/s at the median step" = completions per step / the median step time (less
sensitive to bursts of other jobs on a shared machine). Peak memory is the process's peak RSS
(``ru_maxrss``: imports + models + training). ``--threads N`` (1 or 2) sets ``OMP_NUM_THREADS`` /
``MKL_NUM_THREADS`` and ``torch.set_num_threads(N)`` in every worker, and our ``--cpu_threads N``.
With ``--repeats R`` the configurations run round-robin R times and the table shows the median
samples/s (and the largest peak RSS).

The per-step breakdown (generation / log-prob passes / reward / update / framework overhead) comes
from our module's own timers and from timing wrappers put around TRL's methods in its worker
(the library code is not changed).

Cost model. Each worker wraps ``LlamaModel.forward`` (the decoder stack), ``LlamaForCausalLM.forward``
(its lm_head rows: ``logits_to_keep``), TRL's fused lm_head (``_ChunkedLogProbFunction``: TRL 1.16 scores
log-probs on the decoder stack's output, in tiles, all positions on CPU) and
``GenerationMixin.generate`` — class attributes, ``functools.wraps``, so signatures and behaviour are
unchanged — and records per forward its rows B, new positions W and KV-cache length c, and the rows
through the lm_head; a forward inside ``generate`` is generation, one with gradients the update, the
others log-prob passes (reference, old policy). With hidden h, L layers, H query / H_kv key-value
heads of size d, intermediate I and vocabulary V:

    P_ne        = L·(2·h·H·d + 2·h·H_kv·d + 3·h·I)       the linear weights of the decoder layers
    F(n, m, a)  = 2·P_ne·n + 2·h·V·m + 4·L·H·d·a          n positions, m lm_head rows, a = Σ over the
                                                           positions of the keys each attends to
    actual      = F(Σ B·W, Σ lm_head rows, Σ B·W·(c + W)) over the forwards a side ran (padded
                  widths, full attention rectangles as SDPA with a mask computes them), the update's × 3
                  (backward ≈ 2 × forward)
    minimum     = (prefill + decode) × (1 [generation] + 1 [reference, when kl_coef / beta > 0]
                  + 3·updates per rollout batch), from the real tokens only:
      prefill   = Σ over prompts (once: its k samples share the prompt's KV) F(p, 1, p(p + 1)/2)
      decode    = Σ over samples F(T − 1, T − 1, (T − 1)·p + (T − 1)·T/2)
                  (p real prompt tokens, T generated tokens, EOS included; the T − 1 fed back)

A generated sample needs the same positions as one forward over it, so generation, reference and
each update pass cost the same minimum (×3 for an update). Sharing the prompt among a prompt's k
samples is what the minimum allows; prompt tokens × samples is what a side without that sharing runs
(TRL prefills every sample's prompt in ``generate``; our generation shares the prefill from 8 prompt
tokens on, and our log-prob passes and update run each prompt once, TRL's every sample's). Norms, rotary embeddings, softmax and
the optimizer are left out (O(h) per token). The driver measures this CPU's rate for the model's own
matmul shapes before and after the runs, keeping the higher (a busy machine only lowers it) (``F.linear`` of [M, h]×[h, H·d], [M, h]×[h, H_kv·d], [M, h]×[h, I],
[M, I]×[I, h], [M, h]×[h, V], each timed for ≥ 0.2 s at the run's thread count, combined weighted by
how often a forward token uses each) at M = 512 rows ("batched": prefill, log-prob passes, update)
and M = prompts × 2 rows (one decode step). Per run the report gives the minimum and actual GFLOP per
step, minimum MFLOP per generated sample split into generation / reference / update, the achieved
rate (minimum FLOPs / step seconds), its fraction of the batched matmul rate, and the fraction of the
shape-aware limit (minimum prefill + reference + update FLOPs at the batched rate plus minimum decode
FLOPs at the decode rate, over the step time).

Results: ``<out>/vs_trl.md`` and ``<out>/vs_trl.json`` for the default invocation (SFT model, 1
thread), ``<out>/vs_trl_<model>_v<vocab>_t<threads>.{md,json}`` otherwise; ``--summary`` collects
every ``<out>/vs_trl*.json`` into ``<out>/vs_trl_sizes.md``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional

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
TARGET = 1.2  # samples/s ratio target of the default (SFT) run
TARGET_SIZES = 1.5  # ... and of the random-init presets / custom shapes
PHASES = ("generation", "logprobs", "reward", "update", "overhead")
KINDS = ("generation", "logprobs", "update")  # forwards by purpose (cost model)

# random-init Llama presets (head dim 64, intermediate ≈ 8/3·hidden)
PRESETS = {"3m": {"hidden": 256, "layers": 4}, "27m": {"hidden": 512, "layers": 8}}
MAX_POSITIONS = 1024  # max_position_embeddings / model_max_length of the built models
FULL_ALPHABET_FROM = 512  # built tokenizers hold all 256 bytes from this vocabulary size on
TASK_SIZES = {"train": 32768, "validation": 128, "test": 256}  # build_task's defaults (same prompts)
MATMUL_BATCHED_ROWS = 512

ENV = {
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
    "WANDB_MODE": "disabled", "WANDB_SILENT": "true", "DISABLE_MLFLOW_INTEGRATION": "TRUE",
    "PYTHONDONTWRITEBYTECODE": "1",  # no __pycache__ next to this script from the workers' `import vs_trl`
}


def thread_env(threads: int) -> dict[str, str]:
    """:data:`ENV` with ``threads`` OpenMP / MKL threads."""
    return {**ENV, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


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
        self.counts: list[dict] = []  # per step: the forwards' token counts (when the worker is instrumented)

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
        if _COUNTS is not None:
            self.counts.append(_COUNTS.take())

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
def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _single_thread() -> None:
    _set_threads(1)


def worker_ours(spec: dict) -> dict:
    threads = spec.get("threads", 1)
    _set_threads(threads)
    import vs_trl as bench  # the module instance that StepClock and the reward come from
    from rlhf_lightning.cli import RLHFCLI

    bench._instrument(spec["eos_ids"], ours=True)

    _, objective, k, updates = CONFIGS[spec["name"]]
    model, root = spec["model_dir"], spec["run_dir"]
    if objective == "rloo":
        objective_args = ["--model.objective", "rlhf_lightning.objectives.RLOO", "--model.objective.k", str(k)]
    else:
        objective_args = ["--model.objective", "rlhf_lightning.objectives.REBEL",
                          "--model.objective.inner_epochs", str(updates)]
    args = [
        "fit", "--seed_everything", "0", "--cpu_threads", str(threads),
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
    return {"clock": clock, "updates": cli.trainer.global_step, "module_summary": summary,
            "counts_info": bench._COUNTS.info}


TRL_TRAINER_HOOKS = ("_generate_single_turn", "_generate_and_score_completions", "training_step")
"""Methods of TRL's trainers that the TRL worker wraps with its phase timers."""


def missing_trl_hooks(trl_utils, trainers) -> list[str]:
    """The TRL internals this benchmark wraps that ``trl_utils`` (``trl.trainer.utils``) and ``trainers``
    lack, by name: its fused lm_head (``_ChunkedLogProbFunction``, counted by :func:`_instrument`) and the
    trainers' :data:`TRL_TRAINER_HOOKS`. A missing one would leave phases untimed or FLOPs uncounted."""
    missing = [] if hasattr(trl_utils, "_ChunkedLogProbFunction") else ["trl.trainer.utils._ChunkedLogProbFunction"]
    return missing + [f"{trainer.__name__}.{hook}" for trainer in trainers for hook in TRL_TRAINER_HOOKS
                      if not hasattr(trainer, hook)]


def check_trl_hooks() -> None:
    """Stop with one message when the installed TRL lacks a hook this benchmark relies on."""
    from trl import GRPOTrainer, RLOOTrainer
    from trl.trainer import utils as trl_utils

    missing = missing_trl_hooks(trl_utils, (GRPOTrainer, RLOOTrainer))
    if missing:
        import trl

        raise SystemExit(f"TRL {trl.__version__} lacks {', '.join(missing)}, which this benchmark wraps to time and "
                         "count TRL's work; install the version it was written for: pip install trl==1.16.0")


def worker_trl(spec: dict) -> dict:
    _set_threads(spec.get("threads", 1))
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
    bench.check_trl_hooks()
    bench._instrument(spec["eos_ids"], trl=True)
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
    return {"clock": clock, "updates": trainer.state.global_step, "module_summary": None,
            "counts_info": bench._COUNTS.info}


# ----------------------------------------------------------------------------- models and tokenizers
def llama_shape(hidden: int, layers: int, heads: Optional[int] = None, intermediate: Optional[int] = None,
                kv_heads: Optional[int] = None) -> dict:
    """A Llama-style shape: head dim 64 (fewer heads when ``hidden`` < 64), intermediate = 8/3·hidden
    rounded to a multiple of 64, as many key-value heads as query heads unless given."""
    heads = heads or max(1, hidden // 64)
    if hidden < 1 or layers < 1 or hidden % heads:
        raise ValueError(f"hidden {hidden} must be ≥ 1 and a multiple of heads {heads}; layers {layers} ≥ 1")
    kv_heads = kv_heads or heads
    if heads % kv_heads:
        raise ValueError(f"heads {heads} must be a multiple of kv_heads {kv_heads}")
    intermediate = intermediate or max(64, round(8 * hidden / 3 / 64) * 64)
    return {"hidden": hidden, "layers": layers, "heads": heads, "kv_heads": kv_heads, "head_dim": hidden // heads,
            "intermediate": intermediate}


def shape_of(config: dict) -> dict:
    """The cost model's shape (with ``vocab``) of a Llama ``config.json``."""
    heads = config["num_attention_heads"]
    return {"hidden": config["hidden_size"], "layers": config["num_hidden_layers"], "heads": heads,
            "kv_heads": config.get("num_key_value_heads") or heads,
            "head_dim": config.get("head_dim") or config["hidden_size"] // heads,
            "intermediate": config["intermediate_size"], "vocab": config["vocab_size"],
            "tied": bool(config.get("tie_word_embeddings", False))}


def pseudo_words(n: int, seed: int) -> list[str]:
    """``n`` distinct pronounceable pseudo-words of 1–4 syllables, deterministic in ``seed``."""
    rng = random.Random(seed)
    consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"
    syllables = [c + v for c in consonants for v in vowels] + [c + v + e for c in consonants for v in vowels
                                                               for e in "nrlst"]
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n:
        word = "".join(rng.choice(syllables) for _ in range(rng.choice((1, 2, 2, 3, 3, 3, 4))))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def tokenizer_corpus(texts: list[str], vocab_size: int, seed: int = 0) -> list[str]:
    """``texts`` plus lines of 2·``vocab_size`` pseudo-words, each at least twice (rank r: 2 + ⌊50/√r⌋
    times, shuffled with ``seed``): enough distinct frequent pairs for ``vocab_size`` BPE merges."""
    words = pseudo_words(2 * vocab_size, seed)
    stream = [word for rank, word in enumerate(words, 1) for _ in range(2 + int(50 / rank ** 0.5))]
    random.Random(seed + 1).shuffle(stream)
    return list(texts) + [" ".join(stream[i:i + 20]) for i in range(0, len(stream), 20)]


def build_tokenizer(vocab_size: int, texts: list[str], seed: int = 0, pad_token: str = "eos",
                    model_max_length: int = MAX_POSITIONS):
    """A byte-level BPE ``PreTrainedTokenizerFast`` of ``vocab_size`` tokens trained on
    :func:`tokenizer_corpus` (``texts`` + pseudo-words): ``<bos>`` (added in front of every text),
    ``<eos>``, and the pad token: ``<eos>`` itself (``pad_token="eos"``) or a ``<pad>`` of its own
    (``"own"``). Holds the corpus's characters only below :data:`FULL_ALPHABET_FROM` tokens, all 256 bytes
    from there on. ``len(tokenizer)`` may differ from ``vocab_size`` when the corpus cannot reach it
    (check it)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if pad_token not in ("eos", "own"):
        raise ValueError(f"pad_token must be 'eos' or 'own', got {pad_token!r}")
    specials = ["<bos>", "<eos>"] + (["<pad>"] if pad_token == "own" else [])
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet() if vocab_size >= FULL_ALPHABET_FROM else []
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=specials,
                                  initial_alphabet=alphabet, show_progress=False)
    backend.train_from_iterator(tokenizer_corpus(texts, vocab_size, seed), trainer=trainer)
    bos = backend.token_to_id("<bos>")
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                           special_tokens=[("<bos>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<eos>" if pad_token == "eos" else "<pad>",
                                   model_max_length=model_max_length, clean_up_tokenization_spaces=False)


def build_model(tokenizer, shape: dict, out_dir: Path, seed: int = 0) -> Path:
    """A random-init ``LlamaForCausalLM`` of ``shape`` for ``tokenizer`` (``vocab_size = len(tokenizer)``,
    untied lm_head, seed ``seed``), saved with the tokenizer (safetensors) into ``out_dir``. Config and
    generation config carry the tokenizer's bos / eos / pad ids and nothing else about sampling."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
                         num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                         num_key_value_heads=shape["kv_heads"], head_dim=shape["head_dim"],
                         max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=False, **ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(**ids)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def task_examples(n: int) -> list[dict]:
    """The first ``n`` training examples (``prompt``, ``reference``) of the embedded task: from its
    ``train.jsonl`` when built, else generated in memory exactly as ``build_task`` would (same seed)."""
    path = TASK_DIR / "train.jsonl"
    if path.exists():
        rows = []
        with open(path) as handle:
            for line in handle:
                if line.strip():
                    record = json.loads(line)
                    rows.append({"prompt": record["prompt"], "reference": record.get("reference", "")})
                if len(rows) == n:
                    break
        return rows
    from rlhf_lightning.tasks.summarize.corpus import make_splits

    examples = make_splits({"train": min(n, TASK_SIZES["train"])}, seed=0)["train"]  # its first split: same rows
    return [{"prompt": ex.prompt, "reference": ex.reference} for ex in examples]


def write_prompts(work: Path, prompts: list[str]) -> Path:
    path = work / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def prepare_random_model(work: Path, n_prompts: int, shape: dict, vocab_size: int, seed: int = 0,
                         pad_token: str = "eos", corpus_examples: int = 4096) -> tuple[Path, Path, dict]:
    """The built model + tokenizer in ``work/model``, the first ``n_prompts`` task prompts, and what was built."""
    started = time.perf_counter()
    rows = task_examples(max(n_prompts, corpus_examples))
    if len(rows) < n_prompts:
        raise SystemExit(f"need {n_prompts} prompts, the task has {len(rows)}")
    texts = [f"{row['prompt']} {row['reference']}" for row in rows[:corpus_examples]]
    tokenizer = build_tokenizer(vocab_size, texts, seed=seed, pad_token=pad_token)
    if len(tokenizer) != vocab_size:
        print(f"warning: the tokenizer reaches {len(tokenizer)} tokens, not the {vocab_size} asked for", flush=True)
    model_dir = build_model(tokenizer, shape, work / "model", seed=seed)
    info = {"vocab_requested": vocab_size, "vocab": len(tokenizer), "pad_token": tokenizer.pad_token,
            "build_seconds": round(time.perf_counter() - started, 1)}
    return model_dir, write_prompts(work, [row["prompt"] for row in rows[:n_prompts]]), info


# ----------------------------------------------------------------------------- cost model
def nonembedding_params(shape: dict) -> int:
    """P_ne: the linear weights of the decoder layers (q, k, v, o, gate, up, down)."""
    h, attn, kv = shape["hidden"], shape["heads"] * shape["head_dim"], shape["kv_heads"] * shape["head_dim"]
    return shape["layers"] * (2 * h * attn + 2 * h * kv + 3 * h * shape["intermediate"])


def forward_flops(shape: dict, positions: float, logits: float, attention: float) -> float:
    """F(n, m, a) = 2·P_ne·n + 2·h·V·m + 4·L·H·d·a: a forward over ``positions`` tokens, ``logits`` of
    them through the lm_head, ``attention`` = Σ over positions of the keys each attends to."""
    return (2 * nonembedding_params(shape) * positions + 2 * shape["hidden"] * shape["vocab"] * logits
            + 4 * shape["layers"] * shape["heads"] * shape["head_dim"] * attention)


def minimum_sample_flops(shape: dict, prompt_length: int, completion_length: int) -> dict:
    """The minimum FLOPs of one forward over a sample of ``prompt_length`` real prompt tokens and
    ``completion_length`` ≥ 1 generated ones (EOS included), in two parts. ``prompt``: the p prompt
    positions, the logits of the last one, causal attention p(p+1)/2 — the same for every sample of
    the prompt, so needed once per prompt. ``response``: the T − 1 fed-back tokens, one logit row each,
    each attending to the prompt and the response so far: Σ_{i=1}^{T−1} (p + i) keys. Generation
    (prefill + decode) costs exactly this forward, a reference forward too, an update 3×."""
    p, t = prompt_length, max(completion_length, 1)
    prompt = forward_flops(shape, p, 1, p * (p + 1) / 2)
    response = forward_flops(shape, t - 1, t - 1, (t - 1) * p + (t - 1) * t / 2)
    return {"prompt": prompt, "response": response}


def minimum_step_flops(shape: dict, prompt_lengths: list[int], completion_lengths: list[int], samples_per_prompt: int,
                       reference: bool, updates: int) -> dict:
    """Minimum FLOPs of one rollout batch from its rows' real lengths (each prompt's ``samples_per_prompt``
    rows share its prompt part): generation (prefill = the prompt parts, decode = the response parts), the
    reference forward (when the KL term is on) and ``updates`` updates (forward + backward ≈ 3 forwards)."""
    prefill = decode = 0.0
    for p, t in zip(prompt_lengths, completion_lengths):
        sample = minimum_sample_flops(shape, p, t)
        prefill += sample["prompt"] / samples_per_prompt
        decode += sample["response"]
    forward = prefill + decode
    out = {"prefill": prefill, "decode": decode, "generation": forward, "reference": forward if reference else 0.0,
           "update": 3 * updates * forward}
    out["total"] = out["generation"] + out["reference"] + out["update"]
    return out


def actual_step_flops(shape: dict, counts: dict) -> dict:
    """FLOPs of the forwards a side really ran in one step (``counts[kind]``: positions = Σ B·W, logits =
    Σ B·logit rows, attention = Σ B·W·(c + W)), the update's × 3."""
    out = {kind: forward_flops(shape, counts[kind]["positions"], counts[kind]["logits"], counts[kind]["attention"])
           for kind in KINDS}
    out["update"] *= 3
    out["total"] = sum(out[kind] for kind in KINDS)
    return out


def matmul_shapes(shape: dict) -> dict[str, tuple[int, int, int]]:
    """name → (in features, out features, uses per forward token) of the model's matmuls."""
    h, attn, kv, i, layers = (shape["hidden"], shape["heads"] * shape["head_dim"], shape["kv_heads"] * shape["head_dim"],
                              shape["intermediate"], shape["layers"])
    shapes = {"q_o": (h, attn, 2 * layers), "k_v": (h, kv, 2 * layers), "gate_up": (h, i, 2 * layers),
              "down": (i, h, layers), "lm_head": (h, shape["vocab"], 1)}
    if attn == kv:  # one shape for q, k, v, o
        shapes["q_o"] = (h, attn, 4 * layers)
        del shapes["k_v"]
    return shapes


def measure_matmul_rates(shape: dict, decode_rows: int, threads: int, seconds: float = 0.2,
                         batched_rows: int = MATMUL_BATCHED_ROWS) -> dict:
    """FLOP/s of ``F.linear`` at the model's own shapes (:func:`matmul_shapes`), for ``decode_rows`` rows
    (one decode step of a rollout batch) and ``batched_rows`` rows (prefill / log-prob passes / update),
    each shape timed for ≥ ``seconds`` (≥ 3 calls after one warm-up), combined weighted by use."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    out = {"threads": threads, "seconds_per_shape": seconds}
    for regime, rows in (("decode", decode_rows), ("batched", batched_rows)):
        rates, flops, busy = {}, 0.0, 0.0
        for name, (fan_in, fan_out, uses) in matmul_shapes(shape).items():
            x, w = torch.randn(rows, fan_in), torch.randn(fan_out, fan_in)
            F.linear(x, w)
            calls, start = 0, time.perf_counter()
            while True:
                F.linear(x, w)
                calls += 1
                elapsed = time.perf_counter() - start
                if elapsed >= seconds and calls >= 3:
                    break
            one = 2.0 * rows * fan_in * fan_out
            rates[name] = one * calls / elapsed
            flops += uses * one
            busy += uses * one / rates[name]
        out[regime] = {"rows": rows, "flops_per_second": flops / busy, "per_shape": rates}
    return out


def run_matmul_worker(spec_path: str, result_path: str) -> None:
    spec = read_spec(spec_path)
    rates = measure_matmul_rates(spec["shape"], spec["decode_rows"], spec["threads"], spec.get("seconds", 0.2))
    Path(result_path).write_text(json.dumps(rates, indent=2))


def matmul_rates(shape: dict, decode_rows: int, threads: int) -> dict:
    """:func:`measure_matmul_rates` in a fresh process with the workers' environment."""
    with tempfile.TemporaryDirectory(prefix="vs_trl_matmul_") as folder:
        spec, result = Path(folder) / "spec.json", Path(folder) / "result.json"
        spec.write_text(json.dumps({"shape": shape, "decode_rows": decode_rows, "threads": threads}))
        env = {**os.environ, **thread_env(threads)}
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--matmul", str(spec), str(result)],
                              cwd=folder, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"matmul rate measurement failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        return json.loads(result.read_text())


def run_costs(shape: dict, counts: list[dict], samples_per_prompt: int, updates: int, reference: bool,
              seconds_per_step: float, samples_per_step: int) -> dict:
    """Per-step means of the minimum and actual FLOPs of a run's timed steps, per generated sample split
    into generation / reference / update, and the achieved rate (minimum FLOPs / step seconds)."""
    minimum = [minimum_step_flops(shape, c["prompt_lengths"], c["completion_lengths"], samples_per_prompt, reference,
                                  updates) for c in counts]
    actual = [actual_step_flops(shape, c) for c in counts]
    mean = lambda rows, key: statistics.fmean(r[key] for r in rows)  # noqa: E731
    out = {"minimum": {k: mean(minimum, k) for k in minimum[0]}, "actual": {k: mean(actual, k) for k in actual[0]}}
    out["minimum_per_sample"] = {k: out["minimum"][k] / samples_per_step for k in ("generation", "reference", "update")}
    out["actual_per_sample"] = {k: out["actual"][k] / samples_per_step for k in KINDS}
    out["actual_over_minimum"] = out["actual"]["total"] / out["minimum"]["total"]
    out["seconds_per_step"] = seconds_per_step
    out["achieved_flops_per_second"] = out["minimum"]["total"] / seconds_per_step
    return out


def add_rate_fractions(cost: dict, rates: dict) -> None:
    """``cost`` (of :func:`run_costs`) gets its fractions of the measured matmul rates: of the batched rate,
    and of the shape-aware limit (minimum decode FLOPs at the decode rate, the rest at the batched rate)."""
    batched, decode = rates["batched"]["flops_per_second"], rates["decode"]["flops_per_second"]
    cost["fraction_of_matmul_rate"] = cost["achieved_flops_per_second"] / batched
    minimum = cost["minimum"]
    cost["limit_seconds_per_step"] = (minimum["total"] - minimum["decode"]) / batched + minimum["decode"] / decode
    cost["fraction_of_shape_limit"] = cost["limit_seconds_per_step"] / cost["seconds_per_step"]


def best_rates(before: dict, after: Optional[dict]) -> dict:
    """The higher of two measurements per regime (a busy machine only ever lowers the rate), both kept."""
    out = {"threads": before["threads"], "before": before, "after": after}
    for regime in ("batched", "decode"):
        out[regime] = max((m[regime] for m in (before, after) if m), key=lambda r: r["flops_per_second"])
    return out


# ----------------------------------------------------------------------------- instrumentation
_COUNTS = None  # the worker's _Counts once instrumented


def first_eos_lengths(completions, eos_ids) -> list[int]:
    """Lengths of generated rows counted by one rule: up to and including the first token of ``eos_ids``,
    the whole row when there is none."""
    import torch

    eos = torch.as_tensor(sorted(set(eos_ids)), dtype=completions.dtype)
    is_eos = torch.isin(completions, eos)
    width = completions.shape[1]
    first = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, torch.full_like(is_eos[:, 0], width, dtype=torch.long))
    return [int(v) for v in first]


class _Counts:
    """Token counts of every policy / reference forward and of every ``generate`` call, per step."""

    def __init__(self, eos_ids) -> None:
        self.eos_ids = list(eos_ids)
        self.in_generate = 0
        self.info: dict = {}  # the first generate call's settings
        self.reset()

    def reset(self) -> None:
        self.step = {kind: {"calls": 0, "positions": 0, "logits": 0, "attention": 0} for kind in KINDS}
        self.step.update(prompt_lengths=[], completion_lengths=[], prompt_widths=[], generated_widths=[],
                         prompt_digest=hashlib.sha256())

    def take(self) -> dict:
        step = self.step
        step["prompt_digest"] = step["prompt_digest"].hexdigest()[:16]
        self.reset()
        return step

    def _kind(self, grad: bool) -> str:
        return "generation" if self.in_generate else ("update" if grad else "logprobs")

    def backbone(self, rows: int, width: int, past: int, grad: bool) -> None:
        """A decoder-stack forward over ``rows`` × ``width`` new positions after ``past`` cached ones."""
        entry = self.step[self._kind(grad)]
        entry["calls"] += 1
        entry["positions"] += rows * width
        entry["attention"] += rows * width * (past + width)

    def head(self, positions: int, grad: bool) -> None:
        """``positions`` rows through the lm_head."""
        self.step[self._kind(grad)]["logits"] += positions

    def generation(self, input_ids, attention_mask, completions, info: dict) -> None:
        """One rollout's generation: its ``[N, P]`` prompt rows (one per sample), the ``[N, R]`` raw generated
        tokens, and the settings it sampled with (kept from the first call)."""
        width = input_ids.shape[1]
        mask = attention_mask if attention_mask is not None else (input_ids * 0 + 1)
        real = [row[m.bool()].tolist() for row, m in zip(input_ids, mask)]
        for ids in sorted(real):  # order-free: the same prompts give the same digest
            self.step["prompt_digest"].update(json.dumps(ids).encode())
        self.step["prompt_lengths"] += [len(ids) for ids in real]
        self.step["prompt_widths"].append(width)
        self.step["generated_widths"].append(completions.shape[1])
        self.step["completion_lengths"] += first_eos_lengths(completions.cpu(), self.eos_ids)
        if not self.info:
            self.info = {**info, "first_prompt_ids": real[0]}


_SETTINGS = ("do_sample", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "max_new_tokens",
             "min_new_tokens", "eos_token_id", "pad_token_id")


def _instrument(eos_ids, trl: bool = False, ours: bool = False) -> _Counts:
    """Count every forward and every generation in :data:`_COUNTS`, by wrapping (class or module attributes,
    signatures kept with ``functools.wraps``): ``LlamaModel.forward`` (the decoder stack),
    ``LlamaForCausalLM.forward`` (its lm_head rows), ``GenerationMixin.generate`` and its logits-processor
    builder; with ``trl``, TRL's fused lm_head (``_ChunkedLogProbFunction``: its trainers score log-probs on
    the decoder stack's output instead of calling the model's forward); with ``ours``, our engine's
    ``HFGenerator.generate`` (a generation region: our own sampling loop does not call ``generate``) and the
    loop itself (``sample_dropping_ended``, for the raw tokens before our response mask). Only the outermost
    generation of a nested pair records the rollout."""
    global _COUNTS
    import torch
    from transformers import LlamaForCausalLM, LlamaModel
    from transformers.generation.utils import GenerationMixin

    counts = _COUNTS = _Counts(eos_ids)
    backbone, forward, generate = LlamaModel.forward, LlamaForCausalLM.forward, GenerationMixin.generate
    build_processors = GenerationMixin._get_logits_processor
    seen: dict = {}

    def rows_width(args, kwargs) -> tuple[int, int]:
        ids = kwargs.get("input_ids", args[0] if args else None)
        rows, width = ids.shape if ids is not None else kwargs["inputs_embeds"].shape[:2]
        return int(rows), int(width)

    @functools.wraps(backbone)
    def counted_backbone(self, *args, **kwargs):
        rows, width = rows_width(args, kwargs)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        counts.backbone(rows, width, int(past), torch.is_grad_enabled())
        return backbone(self, *args, **kwargs)

    @functools.wraps(forward)
    def counted_forward(self, *args, **kwargs):
        rows, width = rows_width(args, kwargs)
        keep = kwargs.get("logits_to_keep", 0)
        logits = (min(keep, width) if keep else width) if isinstance(keep, int) else int(torch.as_tensor(keep).numel())
        counts.head(rows * logits, torch.is_grad_enabled())
        return forward(self, *args, **kwargs)

    @functools.wraps(build_processors)
    def recorded_processors(self, generation_config, input_ids_seq_length=None, *args, **kwargs):
        processors = build_processors(self, generation_config, input_ids_seq_length, *args, **kwargs)
        names = []
        for p in processors:
            name = type(p).__name__
            if name == "MinLengthLogitsProcessor" and input_ids_seq_length is not None \
                    and p.min_length <= input_ids_seq_length:
                name += " (no-op: min_length ≤ prompt width)"
            names.append(name)
        seen["processors"] = names
        seen["settings"] = {key: getattr(generation_config, key, None) for key in _SETTINGS}  # after merging
        return processors

    @functools.wraps(generate)
    def counted_generate(self, *args, **kwargs):
        outer = not counts.in_generate
        counts.in_generate += 1
        try:
            out = generate(self, *args, **kwargs)
        finally:
            counts.in_generate -= 1
        ids = kwargs.get("input_ids", args[0] if args else None)
        completions = (out if isinstance(out, torch.Tensor) else out.sequences)[:, ids.shape[1]:]
        if outer:
            counts.generation(ids, kwargs.get("attention_mask"), completions,
                              {**seen.get("settings", {}), "engine": "transformers generate",
                               "logits_processors": seen.get("processors")})
        else:  # inside our engine: its raw tokens
            seen["raw"], seen["engine"] = completions, "transformers generate"
        return out

    LlamaModel.forward, LlamaForCausalLM.forward = counted_backbone, counted_forward
    GenerationMixin.generate = counted_generate
    GenerationMixin._get_logits_processor = recorded_processors
    if trl:
        from trl.trainer import utils as trl_utils

        function = getattr(trl_utils, "_ChunkedLogProbFunction", None)
        if function is not None:
            chunked = function.forward

            @functools.wraps(chunked)
            def counted_chunked(ctx, hidden, *args, **kwargs):
                counts.head(int(hidden.shape[0]), hidden.requires_grad)  # forward of a Function: grad mode is off
                return chunked(ctx, hidden, *args, **kwargs)

            function.forward = staticmethod(counted_chunked)
    if ours:
        _instrument_ours(counts, seen)
    return counts


def _instrument_ours(counts: _Counts, seen: dict) -> None:
    """The generation region of our engine (see :func:`_instrument`)."""
    from rlhf_lightning.generation import huggingface

    engine = huggingface.HFGenerator.generate
    loop = getattr(huggingface, "sample_dropping_ended", None)

    def loop_processors(params) -> Optional[list[str]]:
        try:
            from rlhf_lightning.generation.decode import _warpers
        except ImportError:
            return None
        names = [type(w).__name__ for w in _warpers(params)]
        return names + (["EOS forbidden for min_new_tokens"] if params.min_new_tokens else [])

    @functools.wraps(engine)
    def counted_engine(self, model, input_ids, attention_mask, params, *args, **kwargs):
        outer = not counts.in_generate
        seen.pop("raw", None)
        counts.in_generate += 1
        try:
            generation = engine(self, model, input_ids, attention_mask, params, *args, **kwargs)
        finally:
            counts.in_generate -= 1
        if outer:
            k = params.num_samples
            raw, used = seen.pop("raw", None), seen.pop("engine", "?")
            rows = input_ids.shape[0] * k
            completions = raw if raw is not None and raw.shape[0] == rows else generation.responses
            info = {"do_sample": not params.greedy, "temperature": params.temperature, "top_k": params.top_k,
                    "top_p": params.top_p, "min_p": None, "repetition_penalty": None,
                    "max_new_tokens": params.max_new_tokens, "min_new_tokens": params.min_new_tokens,
                    "eos_token_id": list(self.eos_ids), "pad_token_id": self.pad_token_id, "engine": used,
                    "logits_processors": seen.get("processors") if used == "transformers generate"
                    else loop_processors(params)}
            counts.generation(input_ids.repeat_interleave(k, 0), attention_mask.repeat_interleave(k, 0), completions,
                              info)
        return generation

    huggingface.HFGenerator.generate = counted_engine
    if loop is not None:
        @functools.wraps(loop)
        def recorded_loop(*args, **kwargs):
            out = loop(*args, **kwargs)
            seen["raw"], seen["engine"] = out[0], "rlhf_lightning sampling loop"
            return out

        huggingface.sample_dropping_ended = recorded_loop


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
    _, objective, k, updates = CONFIGS[spec["name"]]
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
    counts = [clock.counts[i] for i in timed] if len(clock.counts) == warmup + steps else []
    result = {
        "name": spec["name"], "library": library, "objective": objective,
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
        "generation_settings": out.get("counts_info") or {},
    }
    if counts and all(c["completion_lengths"] for c in counts):
        shape = shape_of(json.loads((Path(spec["model_dir"]) / "config.json").read_text()))
        reference = (spec["kl_coef"] > 0) and spec["name"] != "trl_grpo_beta0"
        result.update({
            "mean_prompt_length": statistics.fmean(v for c in counts for v in c["prompt_lengths"]),
            "mean_prompt_width": statistics.fmean(v for c in counts for v in c["prompt_widths"]),
            "mean_generated_width": statistics.fmean(v for c in counts for v in c["generated_widths"]),
            "mean_completion_length_same_count": statistics.fmean(v for c in counts for v in c["completion_lengths"]),
            "prompt_digests": [c["prompt_digest"] for c in counts],
            "forwards_per_step": {kind: {key: statistics.fmean(c[kind][key] for c in counts)
                                         for key in ("calls", "positions", "logits", "attention")} for kind in KINDS},
            "cost": run_costs(shape, counts, k, updates, reference, seconds / steps, spec["prompts_per_step"] * k),
        })
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
    prompts = [row["prompt"] for row in task_examples(n_prompts)]
    if len(prompts) < n_prompts:
        raise SystemExit(f"need {n_prompts} prompts, {TASK_DIR / 'train.jsonl'} has {len(prompts)}")
    return model_dir, write_prompts(work, prompts)


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


def check_inputs(model_dir: Path, prompts_file: Path) -> dict:
    """What both sides will see, checked before the runs: the prompts' ids as our data module encodes them
    (``encode_prompt``) and as TRL does (``tokenizer(text=prompts)``), their lengths, and each side's EOS
    set (ours: ``eos_token_ids``; TRL's: generation config EOS + tokenizer EOS)."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer, GenerationConfig

    from rlhf_lightning.data.encoding import encode_prompt
    from rlhf_lightning.generation.eos import eos_token_ids

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    generation = GenerationConfig.from_pretrained(model_dir)
    prompts = [json.loads(line)["prompt"] for line in prompts_file.read_text().splitlines() if line.strip()]
    ours = [encode_prompt(tokenizer, p) for p in prompts]
    trl = tokenizer(text=prompts)["input_ids"]
    lengths = [len(ids) for ids in ours]
    trl_eos = generation.eos_token_id
    trl_eos = [] if trl_eos is None else [trl_eos] if isinstance(trl_eos, int) else list(trl_eos)
    if tokenizer.eos_token_id not in trl_eos:
        trl_eos = [tokenizer.eos_token_id, *trl_eos]
    ours_eos = list(eos_token_ids(tokenizer, SimpleNamespace(generation_config=generation)))
    return {"prompt_ids_identical": ours == [list(ids) for ids in trl],
            "prompts_differing": sum(a != list(b) for a, b in zip(ours, trl)),
            "prompt_tokens": {"min": min(lengths), "mean": statistics.fmean(lengths), "max": max(lengths)},
            "bos_added": tokenizer.bos_token_id is not None and all(ids[:1] == [tokenizer.bos_token_id] for ids in ours),
            "eos_ids_ours": ours_eos, "eos_ids_trl": trl_eos, "eos_ids": sorted(set(ours_eos) | set(trl_eos)),
            "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
            "pad_is_eos": tokenizer.pad_token_id in ours_eos, "vocab": len(tokenizer),
            "chat_template": bool(getattr(tokenizer, "chat_template", None))}


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
    """Run one configuration in a fresh process (``script --worker SPEC RESULT``) and read its result;
    ``base["threads"]`` (default 1) sets the worker's OpenMP / MKL threads."""
    spec = {**base, "name": name, "run_dir": str(work / f"{name}_r{repeat}")}
    spec_path = work / f"{name}_r{repeat}.spec.json"
    result_path = work / f"{name}_r{repeat}.result.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, **thread_env(int(base.get("threads", 1)))}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    started = time.time()
    proc = subprocess.run([sys.executable, str(script), "--worker", str(spec_path), str(result_path)],
                          cwd=work, env=env, capture_output=True, text=True)
    (work / f"{name}_r{repeat}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-5000:]}")
    result = json.loads(result_path.read_text())
    length = result.get("mean_completion_length_same_count")
    print(f"  {name:<19} {result[rate_key]:7.1f} {unit}  peak {result['peak_rss_mb']:6.0f} MB  "
          f"updates {result['optimizer_updates']:>3}" + (f"  length {length:5.1f}" if length is not None else "")
          + f"  ({time.time() - started:.0f} s)", flush=True)
    return result


def _median_of(runs: list[dict], key: str):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


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
            "mean_completion_length_same_count": _median_of(runs, "mean_completion_length_same_count"),
            "mean_prompt_length": _median_of(runs, "mean_prompt_length"),
            "mean_prompt_width": _median_of(runs, "mean_prompt_width"),
            "mean_generated_width": _median_of(runs, "mean_generated_width"),
            "phase_seconds_per_step": median_run["phase_seconds_per_step"],
            "module_reported_samples_per_second": (median_run["module_summary"] or {}).get("samples_per_second"),
            "cost": median_run.get("cost"),
            "forwards_per_step": median_run.get("forwards_per_step"),
            "generation_settings": runs[0].get("generation_settings"),
            "prompt_digests": runs[0].get("prompt_digests"),
        }
    return rows


def ratios(rows: dict[str, dict], target: float = TARGET) -> list[dict]:
    out = []
    for ours, trl in RATIOS:
        if ours in rows and trl in rows:
            speed = rows[ours]["samples_per_second"] / rows[trl]["samples_per_second"]
            cpu = rows[ours]["samples_per_cpu_second"] / rows[trl]["samples_per_cpu_second"]
            typical = rows[ours]["samples_per_second_median_step"] / rows[trl]["samples_per_second_median_step"]
            out.append({"ours": ours, "trl": trl, "samples_per_second_ratio": speed,
                        "median_step_ratio": typical, "samples_per_cpu_second_ratio": cpu,
                        "peak_memory_ratio": rows[ours]["peak_rss_mb"] / rows[trl]["peak_rss_mb"],
                        "target": target, "meets_target": speed >= target})
    return out


def same_work_checks(rows: dict[str, dict]) -> dict:
    """Across the runs: the same prompt ids at every timed step, the same sampling settings, and the mean
    completion lengths (one counting rule)."""
    digests = {name: row["prompt_digests"] for name, row in rows.items() if row.get("prompt_digests")}
    settings = {name: {k: v for k, v in (row.get("generation_settings") or {}).items() if k != "first_prompt_ids"}
                for name, row in rows.items()}
    for s in settings.values():  # the processors that change the distribution (a no-op one is reported apart)
        s["distribution_processors"] = [p for p in s.get("logits_processors") or [] if "no-op" not in p]
    keys = ("do_sample", "temperature", "top_k", "top_p", "max_new_tokens", "distribution_processors")
    distinct = {key: sorted({json.dumps(s.get(key)) for s in settings.values()}) for key in keys}
    eos = {name: s.get("eos_token_id") for name, s in settings.items()}
    return {"prompt_ids_same_every_step": len({json.dumps(d) for d in digests.values()}) == 1 if digests else None,
            "sampling_settings_same": all(len(v) == 1 for v in distinct.values()),
            "sampling_settings": {key: [json.loads(v) for v in values] for key, values in distinct.items()},
            "logits_processors": {name: s.get("logits_processors") for name, s in settings.items()},
            "engines": {name: s.get("engine") for name, s in settings.items()},
            "eos_token_id_in_generate": eos}


def _fmt(value, spec: str = ".1f", none: str = "–") -> str:
    return none if value is None else format(value, spec)


def model_line(meta: dict) -> str:
    m = meta["model"]
    if m["preset"] == "sft":
        return (f"Model: the embedded task's SFT Llama ({meta['model_parameters']:,} parameters; hidden {m['hidden']}, "
                f"{m['layers']} layers, vocab {m['vocab']}, word-level tokenizer)")
    vocab = f"vocab {m['vocab']:,}" + (f" (asked {m['vocab_requested']:,})" if m["vocab"] != m["vocab_requested"] else "")
    return (f"Model: random-init Llama `{m['preset']}` ({meta['model_parameters']:,} parameters, "
            f"{m['nonembedding_parameters']:,} non-embedding; hidden {m['hidden']}, {m['layers']} layers, "
            f"{m['heads']} heads × {m['head_dim']}, intermediate {m['intermediate']}, untied lm_head, seed "
            f"{m['seed']}), byte-level BPE tokenizer of {vocab} tokens (pad = {m['pad_token']})")


def markdown(rows: dict, pairs: list[dict], meta: dict) -> str:
    target = meta.get("target", TARGET)
    prompt = meta.get("inputs", {}).get("prompt_tokens")
    threads = meta.get("threads", 1)
    lines = [
        f"# rlhf_lightning vs TRL: online training throughput on CPU ({meta.get('label', 'sft')})", "",
        f"{meta['steps']} timed steps after {meta['warmup']} warm-up step(s), {meta['prompts_per_step']} prompts × 2 "
        f"completions per step, max_new_tokens {meta['max_new_tokens']}, temperature 1.0, lr {meta['lr']}, "
        f"KL coefficient {meta['kl_coef']}, 1 optimizer update per rollout batch (4 for ours_rebel_4epochs), fp32. "
        f"{model_line(meta) if 'model' in meta else 'Model: the embedded task SFT Llama'}. "
        + (f"Prompts: the task's training prompts, {prompt['min']}–{prompt['max']} tokens (mean {prompt['mean']:.1f}). "
           if prompt else "")
        + f"Threads: OMP_NUM_THREADS={threads} and torch.set_num_threads({threads}) for both libraries. "
        f"Median of {meta['repeats']} round-robin repeat(s). {meta['host']}; load average "
        f"{meta['load_before'][0]:.1f} before, {meta['load_after'][0]:.1f} after (other jobs on the machine make "
        f"timings noisy).", "",
        f"Versions: torch {meta['versions']['torch']}, transformers {meta['versions']['transformers']}, "
        f"lightning {meta['versions']['lightning']}, trl {meta['versions']['trl']}, "
        f"rlhf_lightning {meta['versions']['rlhf-lightning']}.", "",
        "| run | samples/s | samples/s at the median step | s/step | peak RSS (MB) | RSS before training (MB) | "
        "updates | mean prompt length | mean completion length (own / same count) | setup s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        runs = ", ".join(f"{v:.0f}" for v in row["samples_per_second_runs"])
        sps = f"{row['samples_per_second']:.1f}" + (f" ({runs})" if len(row["samples_per_second_runs"]) > 1 else "")
        lines.append(f"| {name} | {sps} | {row['samples_per_second_median_step']:.1f} | {row['seconds_per_step']:.3f} | "
                     f"{row['peak_rss_mb']:.0f} | {row['rss_before_training_mb']:.0f} | {row['optimizer_updates']} | "
                     f"{_fmt(row.get('mean_prompt_length'), '.2f')} | {row['mean_completion_length']:.2f} / "
                     f"{_fmt(row.get('mean_completion_length_same_count'), '.2f')} | {row['setup_seconds']:.0f} |")
    own = [f"{name} {row['module_reported_samples_per_second']:.0f}" for name, row in rows.items()
           if row["module_reported_samples_per_second"] is not None]
    if own:
        lines += ["", "Our module's own `summary.json` samples_per_second (generation + update time only, without "
                  "per-step logging and the trainer loop; not used above): " + ", ".join(own) + "."]
    lines += ["", f"Ratios ours / TRL (samples/s: > 1 means we are faster, target ≥ {target}; peak memory: < 1 means "
              "we use less). The median-step ratio compares typical steps, so it is less sensitive to bursts of "
              "other jobs on the machine than the ratio of total times (the headline):", "",
              f"| ours | vs TRL | samples/s ratio | median-step ratio | peak memory ratio | samples/s ≥ {target}× |",
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
    lines += cost_lines(rows, meta)
    checks = meta.get("same_work", {})
    inputs = meta.get("inputs", {})
    lines += ["", "Configuration notes: TRL runs with `use_cpu=True, bf16=False, gradient_checkpointing=False, "
              "optim='adamw_torch', steps_per_generation=1, num_iterations=1, per_device_train_batch_size="
              "prompts×2` (it counts completions), `shuffle_dataset=False`, `top_k=0, top_p=1.0`, `report_to='none'`, "
              f"its printer and progress callbacks removed; ours with `cpu_threads: {threads}`, CSVLogger, no progress "
              "bar, no checkpoint, no evaluation callback, `data.shuffle: false`, `no_eos_reward: null`. trl_grpo uses "
              "beta = the KL coefficient (reference model on, like ours; TRL puts it in the loss, per token, we in the "
              "reward, per sequence); trl_grpo_beta0 is TRL's default beta = 0 (no reference forward), for "
              "information. Reward: `overlap_reward` in this file, the same function on both sides."]
    if inputs:
        lines += ["", "Same work on both sides: prompt ids as our data module and as TRL encode them "
                  f"{'identical' if inputs['prompt_ids_identical'] else 'DIFFERENT (' + str(inputs['prompts_differing']) + ' prompts)'}"
                  f" (BOS {'added' if inputs['bos_added'] else 'not added'}, chat template "
                  f"{'yes' if inputs['chat_template'] else 'none'}, no truncation); EOS set ours "
                  f"{inputs['eos_ids_ours']}, TRL {inputs['eos_ids_trl']}; pad id {inputs['pad_token_id']}"
                  f" ({'in the EOS set' if inputs['pad_is_eos'] else 'not in the EOS set: a sampled pad ends our responses, not TRL s'.replace('TRL s', 'TRL’s')}). "
                  "Recorded at every generation of every run: prompt ids the same at every timed step in all runs: "
                  f"{_yes(checks.get('prompt_ids_same_every_step'))}; sampling settings and logits processors the "
                  f"same: {_yes(checks.get('sampling_settings_same'))} (distribution-changing processors "
                  f"{checks.get('sampling_settings', {}).get('distribution_processors')}, top_k "
                  f"{checks.get('sampling_settings', {}).get('top_k')}, top_p "
                  f"{checks.get('sampling_settings', {}).get('top_p')}). \"Same count\" lengths count every response "
                  "up to and including its first token of the shared EOS set, for both libraries; the libraries' own "
                  "counts also include the EOS token (ours ends a response at a sampled pad token too). The earlier "
                  "43.8 (TRL) vs 37.7 (ours) tokens came from a pad token of its own that a random-init model samples: "
                  "our mask ends a response there, TRL does not; the built tokenizers now pad with `<eos>` "
                  "(`--pad-token own` brings the difference back)."]
    lines.append("")
    return "\n".join(lines)


def _yes(value) -> str:
    return "–" if value is None else ("yes" if value else "NO")


def cost_lines(rows: dict, meta: dict) -> list[str]:
    rates = meta.get("matmul_rates")
    if not any(row.get("cost") for row in rows.values()):
        return []
    lines = ["", "Cost model (per timed step, median run; FLOPs from the forwards each side ran, see the docstring: "
             "minimum = real tokens only, each prompt once (its samples share it), generation + reference forward "
             "(when the KL term is on) + 3 × forward per update; actual = the forwards really run, padded widths, "
             "full attention rectangles, each sample's prompt where a side repeats it, any extra log-prob pass). "
             + (f"Matmul rate of this CPU at the model's shapes, {meta.get('threads', 1)} thread(s), the higher of "
                "the measurements before and after the runs: "
                f"{rates['batched']['flops_per_second'] / 1e9:.1f} GFLOP/s at {rates['batched']['rows']} rows, "
                f"{rates['decode']['flops_per_second'] / 1e9:.1f} GFLOP/s at {rates['decode']['rows']} rows (a decode "
                "step). % of matmul rate = minimum FLOPs / step time / the first; % of shape limit = the step time "
                "that the minimum FLOPs need at those two rates (decode at the second) / the step time." if rates else ""),
             "", "| run | prompt tokens (real / padded width) | generated (real / width) | min GFLOP/step | actual "
             "GFLOP/step (gen / logprobs / update) | actual / min | min MFLOP per sample (gen / ref / update) | "
             "achieved GFLOP/s | % of matmul rate | % of shape limit |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    if any((row.get("cost") or {}).get("fraction_of_matmul_rate", 0) > 1 for row in rows.values()):
        lines[1] += (" Some fractions exceed 100 %: the machine was busier while the rate was measured than during "
                     "those runs (other jobs); rerun on a quiet machine.")
    for name, row in rows.items():
        cost = row.get("cost")
        if not cost:
            continue
        act, mins, per = cost["actual"], cost["minimum"], cost["minimum_per_sample"]
        lines.append(
            f"| {name} | {row['mean_prompt_length']:.1f} / {row['mean_prompt_width']:.1f} | "
            f"{row['mean_completion_length_same_count']:.1f} / {row['mean_generated_width']:.1f} | "
            f"{mins['total'] / 1e9:.2f} | {act['total'] / 1e9:.2f} ({act['generation'] / 1e9:.2f} / "
            f"{act['logprobs'] / 1e9:.2f} / {act['update'] / 1e9:.2f}) | {cost['actual_over_minimum']:.2f} | "
            f"{per['generation'] / 1e6:.1f} / {per['reference'] / 1e6:.1f} / {per['update'] / 1e6:.1f} | "
            f"{cost['achieved_flops_per_second'] / 1e9:.2f} | {_fmt(_pct(cost.get('fraction_of_matmul_rate')), '.1f')} | "
            f"{_fmt(_pct(cost.get('fraction_of_shape_limit')), '.1f')} |")
    return lines


def _pct(value):
    return None if value is None else 100 * value


# ----------------------------------------------------------------------------- summary of all sizes
SUMMARY_PAIRS = [("ours_rloo_k2", "trl_rloo_k2"), ("ours_rebel", "trl_rloo_k2"), ("ours_rloo_k2", "trl_grpo"),
                 ("ours_rebel", "trl_grpo")]
SUMMARY_RUNS = ("ours_rloo_k2", "ours_rebel", "trl_rloo_k2", "trl_grpo")


def _threads(meta: dict) -> int:
    threads = meta.get("threads", 1)
    return threads if isinstance(threads, int) else 1  # reports before --threads: a description of 1 thread


def summary_markdown(reports: dict[str, dict]) -> str:
    """One table over every ``vs_trl*.json`` report: size, vocabulary, threads, samples/s and peak-memory
    ratios, fractions of the matmul rate and mean completion lengths."""
    def key(item):
        meta = item[1]["meta"]
        return (meta.get("model_parameters", 0), meta.get("model", {}).get("vocab", 0), _threads(meta))

    items = sorted(reports.items(), key=key)
    short = {"ours_rloo_k2": "ours RLOO", "ours_rebel": "ours REBEL", "trl_rloo_k2": "TRL RLOO", "trl_grpo": "TRL GRPO"}
    head = "| report | model (params) | vocab | threads | new tokens | steps × repeats | "
    lines = ["# rlhf_lightning vs TRL at several sizes", "",
             "Collected from " + ", ".join(f"`{stem}.json`" for stem, _ in items) + " (`python benchmarks/vs_trl.py "
             "--summary`). Ratios ours / TRL: samples/s (> 1: we are faster) and peak RSS (< 1: we use less); the "
             "target is the report's own (1.2 for the SFT model, 1.5 for the built sizes).", "",
             head + " | ".join(f"{short[o]} / {short[t]}" for o, t in SUMMARY_PAIRS) + " | peak RSS ours RLOO / TRL "
             "RLOO | peak RSS ours RLOO / TRL GRPO | target |",
             "|---|---|---:|---:|---:|---:|" + "---:|" * (len(SUMMARY_PAIRS) + 2) + "---:|"]
    for stem, report in items:
        meta, rows = report["meta"], report["rows"]
        model = meta.get("model", {})
        cells = []
        for ours, trl in SUMMARY_PAIRS:
            cells.append(f"{rows[ours]['samples_per_second'] / rows[trl]['samples_per_second']:.2f}×"
                         if ours in rows and trl in rows else "–")
        for ours, trl in (("ours_rloo_k2", "trl_rloo_k2"), ("ours_rloo_k2", "trl_grpo")):
            cells.append(f"{rows[ours]['peak_rss_mb'] / rows[trl]['peak_rss_mb']:.2f}×"
                         if ours in rows and trl in rows else "–")
        lines.append(f"| {stem} | {model.get('preset', 'sft')} ({meta.get('model_parameters', 0) / 1e6:.2f}M) | "
                     f"{model.get('vocab', '–')} | {_threads(meta)} | {meta['max_new_tokens']} | "
                     f"{meta['steps']} × {meta['repeats']} | " + " | ".join(cells) + f" | {meta.get('target', TARGET)} |")
    lines += ["", "Efficiency and lengths: % of this CPU's matmul rate at the model's shapes (minimum FLOPs / step "
              "time / rate; – where the report predates the cost model) and mean completion length (same count for "
              "both sides; the library's own count where that is missing):", "",
              "| report | " + " | ".join(f"% rate {short[n]}" for n in SUMMARY_RUNS) + " | "
              + " | ".join(f"length {short[n]}" for n in SUMMARY_RUNS) + " |",
              "|---|" + "---:|" * (2 * len(SUMMARY_RUNS))]
    for stem, report in items:
        rows = report["rows"]
        rate = [_fmt(_pct(((rows.get(n) or {}).get("cost") or {}).get("fraction_of_matmul_rate")), ".1f")
                for n in SUMMARY_RUNS]
        length = []
        for n in SUMMARY_RUNS:
            row = rows.get(n) or {}
            value = row.get("mean_completion_length_same_count", row.get("mean_completion_length"))
            length.append(_fmt(value, ".2f"))
        lines.append(f"| {stem} | " + " | ".join(rate) + " | " + " | ".join(length) + " |")
    lines.append("")
    return "\n".join(lines)


def write_summary(out: Path) -> Path:
    reports = {}
    for path in sorted(out.glob("vs_trl*.json")):
        try:
            report = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(report, dict) and "rows" in report and "meta" in report:
            reports[path.stem] = report
    if not reports:
        raise SystemExit(f"no vs_trl*.json reports in {out}")
    path = out / "vs_trl_sizes.md"
    path.write_text(summary_markdown(reports))
    print(path.read_text())
    print(f"wrote {path} ({len(reports)} report(s))")
    return path


def versions() -> dict:
    out = {}
    for package in ("torch", "transformers", "lightning", "trl", "rlhf-lightning", "accelerate", "datasets"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def report_stem(label: str, vocab: Optional[int], threads: int) -> str:
    """``vs_trl`` for the default run (SFT model, 1 thread), else ``vs_trl_<label>[_v<vocab>]_t<threads>``."""
    if label == "sft":
        return "vs_trl" if threads == 1 else f"vs_trl_sft_t{threads}"
    return f"vs_trl_{label}_v{vocab}_t{threads}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50, help="timed rollout batches per run (default 50)")
    parser.add_argument("--prompts-per-step", type=int, default=16,
                        help="prompts per rollout batch; 2 completions each (default 16)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rollout batches first (default 1)")
    parser.add_argument("--model", choices=["sft", *PRESETS], default="sft",
                        help="sft: the embedded task's SFT Llama (default); 3m / 27m: a random-init Llama of hidden "
                             "256 × 4 layers / 512 × 8 layers")
    parser.add_argument("--hidden", type=int, help="custom shape: hidden size (with --layers; a random-init model)")
    parser.add_argument("--layers", type=int, help="custom shape: decoder layers")
    parser.add_argument("--heads", type=int, help="custom shape: attention heads (default hidden / 64)")
    parser.add_argument("--intermediate", type=int, help="custom shape: MLP width (default 8/3·hidden, multiple of 64)")
    parser.add_argument("--vocab", type=int, help="built models: BPE vocabulary size (default 8192; from ≈ 30, "
                                                  "the corpus's characters, to 32000 and more)")
    parser.add_argument("--pad-token", choices=["eos", "own"], default="eos",
                        help="built tokenizers: pad with <eos> (default) or a <pad> of its own (reproduces the "
                             "length difference explained in the docstring)")
    parser.add_argument("--seed", type=int, default=0, help="built models: weights and tokenizer corpus seed")
    parser.add_argument("--max-new-tokens", type=int, help="default 12 for sft, 48 for built models")
    parser.add_argument("--threads", type=int, choices=[1, 2], default=1,
                        help="OMP/MKL threads and torch.set_num_threads on both sides, our --cpu_threads (default 1)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--kl-coef", type=float, default=0.05, help="our γ and TRL's beta (default 0.05)")
    parser.add_argument("--target", type=float, help=f"samples/s ratio target (default {TARGET} for sft, "
                                                     f"{TARGET_SIZES} for built models)")
    parser.add_argument("--repeats", type=int, default=3, help="round-robin repeats; median reported (default 3)")
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where the reports go")
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary run folder (logs, CSVs)")
    parser.add_argument("--no-matmul-rate", action="store_true", help="skip measuring the CPU's matmul rate")
    parser.add_argument("--summary", action="store_true",
                        help="only collect <out>/vs_trl*.json into <out>/vs_trl_sizes.md (runs nothing)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.prompts_per_step < 1 or args.warmup < 0 or args.repeats < 1:
        parser.error("--steps, --prompts-per-step and --repeats must be ≥ 1, --warmup ≥ 0")
    custom = any(v is not None for v in (args.hidden, args.layers, args.heads, args.intermediate))
    if args.model == "sft" and custom and (args.hidden is None or args.layers is None):
        parser.error("a custom shape needs --hidden and --layers (or a preset --model 3m / 27m to change)")
    args.built = args.model != "sft" or custom
    if not args.built and (args.vocab is not None or args.pad_token != "eos"):
        parser.error("--vocab / --pad-token apply to built models (--model 3m / 27m or --hidden/--layers)")
    if args.vocab is not None and args.vocab < 8:
        parser.error("--vocab must be ≥ 8")
    if args.built:
        preset = PRESETS.get(args.model, {})
        try:
            args.shape = llama_shape(args.hidden or preset["hidden"], args.layers or preset["layers"], args.heads,
                                     args.intermediate)
        except (KeyError, ValueError) as error:
            parser.error(str(error))
        same = args.model in PRESETS and args.shape == llama_shape(**preset)
        args.label = args.model if same else f"h{args.shape['hidden']}l{args.shape['layers']}"
        args.vocab = args.vocab or 8192
    else:
        args.shape, args.label = None, "sft"
    if args.max_new_tokens is None:
        args.max_new_tokens = 48 if args.built else 12
    if args.max_new_tokens < 1:
        parser.error("--max-new-tokens must be ≥ 1")
    if args.target is None:
        args.target = TARGET_SIZES if args.built else TARGET
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        run_worker(argv[1], argv[2])
        return
    if argv[:1] == ["--matmul"]:
        run_matmul_worker(argv[1], argv[2])
        return
    args = parse_args(argv)
    if args.summary:
        write_summary(args.out)
        return
    if any(CONFIGS[n][0] == "trl" for n in args.only) and importlib.util.find_spec("trl") is None:
        raise SystemExit("benchmarks/vs_trl.py compares against TRL, which is not installed. TRL is an optional "
                         "benchmark dependency only: pip install trl")

    work = Path(tempfile.mkdtemp(prefix="vs_trl_"))
    n_prompts = (args.warmup + args.steps) * args.prompts_per_step
    if args.built:
        model_dir, prompts_file, built = prepare_random_model(work, n_prompts, args.shape, args.vocab, args.seed,
                                                              args.pad_token)
    else:
        (model_dir, prompts_file), built = prepare_inputs(work, n_prompts), {}
    parameters = count_parameters(model_dir / "model.safetensors")
    config = json.loads((model_dir / "config.json").read_text())
    shape = shape_of(config)
    inputs = check_inputs(model_dir, prompts_file)
    model = {"preset": args.label, **shape, "nonembedding_parameters": nonembedding_params(shape),
             "seed": args.seed if args.built else None, **built}
    model.setdefault("vocab_requested", shape["vocab"])
    print(f"vs_trl: {args.label} ({parameters:,} parameters, vocab {shape['vocab']}), {args.steps} timed steps "
          f"(+{args.warmup} warm-up) × {args.prompts_per_step} prompts × 2 completions, max_new_tokens "
          f"{args.max_new_tokens}, {args.threads} thread(s), {args.repeats} repeat(s); prompts "
          f"{inputs['prompt_tokens']['mean']:.1f} tokens on average, ids identical both ways: "
          f"{inputs['prompt_ids_identical']}; work dir {work}", flush=True)
    measure = (lambda: matmul_rates(shape, args.prompts_per_step * 2, args.threads)) \
        if not args.no_matmul_rate else (lambda: None)
    before = measure()
    if before:
        print(f"matmul rate ({args.threads} thread(s)): {before['batched']['flops_per_second'] / 1e9:.1f} GFLOP/s at "
              f"{before['batched']['rows']} rows, {before['decode']['flops_per_second'] / 1e9:.1f} GFLOP/s at "
              f"{before['decode']['rows']} rows", flush=True)
    base = {"model_dir": str(model_dir), "prompts_file": str(prompts_file), "steps": args.steps,
            "warmup": args.warmup, "prompts_per_step": args.prompts_per_step, "max_new_tokens": args.max_new_tokens,
            "lr": args.lr, "kl_coef": args.kl_coef, "threads": args.threads, "eos_ids": inputs["eos_ids"]}
    load_before = os.getloadavg()
    started = time.time()
    results = round_robin(args.only, args.repeats, work, args.keep_work, "vs_trl",
                          lambda name, repeat: run_config(name, base, work, repeat))
    rates = None
    if before:
        rates = best_rates(before, measure())
        for runs in results.values():
            for run in runs:
                if run.get("cost"):
                    add_rate_fractions(run["cost"], rates)
    rows = aggregate(results)
    pairs = ratios(rows, args.target)
    meta = {**base, "repeats": args.repeats, "model_parameters": parameters, "label": args.label, "model": model,
            "target": args.target, "inputs": inputs, "same_work": same_work_checks(rows), "versions": versions(),
            **host_meta(load_before, started, args.threads),
            "timing": "wall clock from the end of the last warm-up step to the end of the last step; "
                      "samples = generated completions; peak memory = ru_maxrss of the run's own process"}
    for key in ("model_dir", "prompts_file"):
        meta.pop(key)
    meta["matmul_rates"] = rates
    stem = report_stem(args.label, shape["vocab"] if args.built else None, args.threads)
    write_report(args.out, stem, {"meta": meta, "rows": rows, "ratios": pairs, "runs": results},
                 markdown(rows, pairs, meta), started)


def host_meta(load_before: tuple[float, float, float], started: float, threads: int = 1) -> dict:
    """Where and under what load a benchmark ran (for its report's ``meta``)."""
    return {"host": f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
            "threads": threads,
            "thread_settings": f"OMP_NUM_THREADS={threads}, torch.set_num_threads({threads}) on both sides",
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
