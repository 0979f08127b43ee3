"""Build (or reuse) the arithmetic task on disk: jsonl splits with an ``answer`` column, the character-level
tokenizer and the SFT warm-start model (the summarisation task's tiny Llama and SFT loop, on this task's data)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence, Union

from rlhf_lightning.tasks.arithmetic.problems import Problem, ProblemConfig, human_examples, make_splits
from rlhf_lightning.tasks.arithmetic.tokenizer import build_tokenizer
from rlhf_lightning.tasks.summarize.build import TaskFiles, _locked, build_embedded, read_split, train_and_save_sft
from rlhf_lightning.tasks.summarize.sft import SFTConfig

VERSION = "arithmetic-v1"
# Seconds a build takes on a shared 2-core machine (for the line announcing it): the splits and tokenizer in
# well under a second, then about 0.04-0.055 s per SFT step (measured: 2000 steps in 113 s).
DATA_SECONDS, SFT_SECONDS_PER_STEP = 1.0, 0.055
__all__ = ["VERSION", "TaskFiles", "build_task", "read_split", "sft_config"]


def sft_config(steps: int = 2000, batch_size: int = 64, lr: float = 3e-3) -> SFTConfig:
    """The task's tiny Llama (the summarisation task's, with a 32-token context) and its SFT settings."""
    return SFTConfig(context=32, steps=steps, batch_size=batch_size, lr=lr)


def _jsonl(problems: Sequence[Problem]) -> bytes:
    return "".join(json.dumps({"prompt": p.prompt, "answer": p.answer}) + "\n" for p in problems).encode("utf-8")


def build_task(
    root: Union[str, Path] = "runs/.cache/arithmetic",
    seed: int = 0,
    *,
    n_train: int = 4096, n_validation: int = 128, n_test: int = 256,
    sft_steps: int = 2000, sft_batch_size: int = 64, sft_lr: float = 3e-3, p_forget_carry: float = 0.5,
    progress: bool = True,
) -> TaskFiles:
    """Build the addition task under ``root``, reusing whatever is already valid (as the summarisation task's
    :func:`~rlhf_lightning.tasks.summarize.build_task`: a manifest of parameters and digests, atomic writes, a
    lock). Splits are jsonl files of ``{"prompt": "57+68=", "answer": "125"}``; ``sft`` is a ``save_pretrained``
    directory of the SFT model and its tokenizer, fine-tuned on the train prompts with sloppy human answers.

    Args:
        root: output directory.
        seed: seeds the problems, the human answers and SFT (initialisation and batch order).
        n_train / n_validation / n_test: split sizes (disjoint, distinct problems).
        sft_steps / sft_batch_size / sft_lr: SFT optimiser steps, batch size and peak learning rate.
        p_forget_carry: chance the SFT answer of a carrying problem has every carry forgotten.
        progress: print a line when a build starts and when it is done, and a bar while fine-tuning.
    """
    files = TaskFiles.at(root)
    files.root.mkdir(parents=True, exist_ok=True)
    sizes = {"train": n_train, "validation": n_validation, "test": n_test}
    problems = ProblemConfig(p_forget_carry=p_forget_carry)
    with _locked(files.root):
        _build(files, seed, sizes, problems, sft_config(sft_steps, sft_batch_size, sft_lr), progress)
    return files


def _build(files: TaskFiles, seed: int, sizes: dict, problems: ProblemConfig, config: SFTConfig,
           progress: bool) -> None:
    build_embedded(
        files, title="arithmetic", version=VERSION, progress=progress,
        data_params={"seed": seed, "sizes": sizes, "problems": asdict(problems)},
        sft_params={"seed": seed, **config.to_dict()},
        make_records=lambda: make_splits(sizes, seed, problems), to_jsonl=_jsonl,
        save_sft=lambda splits: _save_sft(files, human_examples(splits["train"], seed, problems), config, seed,
                                          progress),
        seconds=lambda retrain: DATA_SECONDS + retrain * config.steps * SFT_SECONDS_PER_STEP)


def _save_sft(files: TaskFiles, examples, config: SFTConfig, seed: int, progress: bool) -> dict:
    start = time.perf_counter()
    tokenizer = build_tokenizer(model_max_length=config.context)
    return train_and_save_sft(files, tokenizer, examples, config, seed, progress, start)
