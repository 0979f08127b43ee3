"""Build (or reuse) the headline task on disk: jsonl splits (the editors' headlines as ``reference``), the
word-level tokenizer and the SFT warm start on the interns' headlines (the summarisation task's tools)."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Union

from rlhf_lightning.tasks.headline.corpus import HeadlineConfig, intern_examples, make_splits
from rlhf_lightning.tasks.summarize.build import (TaskFiles, _jsonl, _locked, build_embedded, read_split,
                                                  train_and_save_sft)
from rlhf_lightning.tasks.summarize.sft import SFTConfig
from rlhf_lightning.tasks.summarize.tokenizer import train_tokenizer

VERSION = "headline-v1"
# Seconds a build takes on a shared 2-core machine (for the line announcing it), as the summarisation task's.
DATA_SECONDS, SFT_SECONDS_PER_STEP = 8.0, 0.075
__all__ = ["VERSION", "TaskFiles", "build_task", "read_split"]


def build_task(
    root: Union[str, Path] = "runs/.cache/headline",
    seed: int = 0,
    *,
    n_train: int = 16384, n_validation: int = 128, n_test: int = 256, n_sft: int = 32768,
    sft_steps: int = 1500, sft_batch_size: int = 64, sft_lr: float = 3e-3,
    progress: bool = True,
) -> TaskFiles:
    """Build the headline task under ``root``, reusing whatever is already valid (as the summarisation task's
    :func:`~rlhf_lightning.tasks.summarize.build_task`: a manifest of parameters and digests, atomic writes, a
    lock). Splits are jsonl files of ``{"prompt": "post: ... headline:", "reference": <editor's headline>}``;
    ``sft`` is a ``save_pretrained`` directory of the SFT model and its tokenizer, fine-tuned on the train
    prompts with interns' headlines.

    Args:
        root: output directory.
        seed: seeds the posts, the interns' headlines and SFT (initialisation and batch order).
        n_train / n_validation / n_test: split sizes (disjoint, distinct posts).
        n_sft: posts of the SFT data (distinct from the splits' posts).
        sft_steps / sft_batch_size / sft_lr: SFT optimiser steps, batch size and peak learning rate.
        progress: print a line when a build starts and when it is done, and a bar while fine-tuning.
    """
    files = TaskFiles.at(root)
    files.root.mkdir(parents=True, exist_ok=True)
    sizes = {"train": n_train, "validation": n_validation, "test": n_test, "sft": n_sft}
    corpus = HeadlineConfig()
    config = SFTConfig(steps=sft_steps, batch_size=sft_batch_size, lr=sft_lr)

    def save_sft(splits: dict) -> dict:
        start = time.perf_counter()
        examples = intern_examples(splits["sft"], seed, corpus)
        tokenizer = train_tokenizer([f"{ex.prompt} {ex.reference}" for ex in examples], config.context)
        return train_and_save_sft(files, tokenizer, examples, config, seed, progress, start)

    with _locked(files.root):
        build_embedded(files, title="headline", version=VERSION, progress=progress,
                       data_params={"seed": seed, "sizes": sizes, "corpus": asdict(corpus)},
                       sft_params={"seed": seed, **config.to_dict()},
                       make_records=lambda: make_splits(sizes, seed, corpus), to_jsonl=_jsonl, save_sft=save_sft,
                       seconds=lambda retrain: DATA_SECONDS + retrain * config.steps * SFT_SECONDS_PER_STEP)
    return files
