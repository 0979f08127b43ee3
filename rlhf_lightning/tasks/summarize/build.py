"""Build (or reuse) the task on disk: jsonl splits, tokenizer and SFT warm-start model."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence, Union

import torch

from rlhf_lightning.tasks.summarize.corpus import CorpusConfig, Example, make_splits
from rlhf_lightning.tasks.summarize.sft import SFTConfig, make_model, train_sft
from rlhf_lightning.tasks.summarize.tokenizer import train_tokenizer

VERSION = "summarize-v1"
SPLITS = ("train", "validation", "test")
SFT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
log = logging.getLogger(__name__)
# How long a build takes (always on the CPU), for the line announcing it; measured on a shared 2-core machine
# (two quickstart runs: 132 s and 153 s): the splits and the tokenizer in about 8 s, then the SFT warm start at
# 0.07-0.08 s a step.
DATA_SECONDS, SFT_SECONDS_PER_STEP = 8.0, 0.075


@dataclass(frozen=True)
class TaskFiles:
    """Where a built task lives. Splits are jsonl files of ``{"prompt": str, "reference": str}``;
    ``sft`` is a ``save_pretrained`` directory holding the SFT model and its tokenizer."""

    root: Path
    train: Path
    validation: Path
    test: Path
    sft: Path
    manifest: Path

    @classmethod
    def at(cls, root: Union[str, Path]) -> "TaskFiles":
        root = Path(root)
        return cls(root, root / "train.jsonl", root / "validation.jsonl", root / "test.jsonl",
                   root / "sft", root / "manifest.json")

    def split(self, name: str) -> Path:
        """Path of split ``name`` (``train``, ``validation`` or ``test``)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split '{name}', expected one of {SPLITS}")
        return getattr(self, name)


def read_split(path: Union[str, Path]) -> list[dict[str, str]]:
    """The records of a split file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _jsonl(examples: Sequence[Example]) -> bytes:
    lines = (json.dumps({"prompt": ex.prompt, "reference": ex.reference}) + "\n" for ex in examples)
    return "".join(lines).encode("utf-8")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _read_manifest(path: Path, version: str = VERSION) -> dict:
    """The manifest at ``path`` when it is one of ``version``, else ``{}``."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) and manifest.get("version") == version else {}


def _file_matches(path: Path, digest: str | None) -> bool:
    return digest is not None and path.is_file() and _sha256(path.read_bytes()) == digest


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``root/.lock`` so that concurrent builds on one machine take turns."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(root / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def outdated(files: TaskFiles, old: dict, data_params: dict, sft_params: dict) -> tuple[dict, list[str], bool]:
    """What a build must redo, from the manifest ``old`` of the last build: the recorded split digests (when the
    data settings are the same), the splits to rewrite, and whether to retrain the SFT model (shared by the
    embedded tasks)."""
    same_data = old.get("data") == data_params
    digests = old.get("digests", {}) if same_data else {}
    stale = [name for name in SPLITS if not _file_matches(files.split(name), digests.get(name))]
    retrain = not (same_data and old.get("sft") == sft_params and _sft_complete(files.sft))
    return digests, stale, retrain


def _sft_complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in SFT_FILES)


def _save_sft(files: TaskFiles, examples: Sequence[Example], config: SFTConfig, seed: int,
              progress: bool) -> dict:
    """Train the tokenizer and the SFT model, save both atomically into ``files.sft``."""
    start = time.perf_counter()
    texts = [f"{ex.prompt} {ex.reference}" for ex in examples]
    tokenizer = train_tokenizer(texts, model_max_length=config.context)
    return train_and_save_sft(files, tokenizer, examples, config, seed, progress, start)


def train_and_save_sft(files: TaskFiles, tokenizer, examples: Sequence, config: SFTConfig, seed: int, progress: bool,
                       start: float) -> dict:
    """A fresh model for ``tokenizer``, trained on ``examples`` (prompt, reference), saved with the tokenizer
    atomically into ``files.sft`` (shared by the embedded tasks); the final loss and the seconds since ``start``."""
    from rlhf_lightning.progress import quiet_third_party_bars

    quiet_third_party_bars()  # "Writing model shards" would write \r updates into a log (also outside the CLI)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make_model(tokenizer, config)
    losses = train_sft(model, tokenizer, examples, config, seed=seed, progress=progress)
    tmp = files.root / f".sft.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(files.sft, ignore_errors=True)
    os.replace(tmp, files.sft)
    tail = losses[-50:]
    return {"final_loss": sum(tail) / max(1, len(tail)), "seconds": round(time.perf_counter() - start, 1)}


def build_task(
    root: Union[str, Path] = "runs/.cache/summarize",
    seed: int = 0,
    *,
    n_train: int = 32768, n_validation: int = 128, n_test: int = 256,
    sft_steps: int = 1800, sft_batch_size: int = 64, sft_lr: float = 3e-3,
    progress: bool = True,
) -> TaskFiles:
    """Build the offline summarisation task under ``root``, reusing whatever is already valid.

    Deterministic in ``seed``. ``manifest.json`` records the parameters and file digests; a
    split that is missing or changed is rewritten, and the SFT model is retrained when its
    directory is incomplete or the data / SFT parameters differ. Files are written atomically.

    Args:
        root: output directory.
        seed: seeds the posts, references and SFT (initialisation and batch order).
        n_train / n_validation / n_test: split sizes (``train`` is also the SFT data).
        sft_steps / sft_batch_size / sft_lr: SFT optimiser steps, batch size and peak learning rate.
        progress: print a line when the build starts (what, where, about how long) and one when it is done,
            and show a progress bar while fine-tuning; nothing is printed when the task is already built.
    """
    files = TaskFiles.at(root)
    files.root.mkdir(parents=True, exist_ok=True)
    sft_config = SFTConfig(steps=sft_steps, batch_size=sft_batch_size, lr=sft_lr)
    with _locked(files.root):
        _build(files, seed, {"train": n_train, "validation": n_validation, "test": n_test}, sft_config, progress)
    return files


def _build(files: TaskFiles, seed: int, sizes: dict[str, int], sft_config: SFTConfig, progress: bool) -> None:
    """Bring ``files`` up to date (see :func:`build_task`)."""
    build_embedded(
        files, title="summarisation", version=VERSION, progress=progress,
        data_params={"seed": seed, "sizes": sizes, "corpus": asdict(CorpusConfig())},
        sft_params={"seed": seed, **sft_config.to_dict()},
        make_records=lambda: make_splits(sizes, seed), to_jsonl=_jsonl,
        save_sft=lambda splits: _save_sft(files, splits["train"], sft_config, seed, progress),
        seconds=lambda retrain: DATA_SECONDS + retrain * sft_config.steps * SFT_SECONDS_PER_STEP)


def build_embedded(files: TaskFiles, *, title: str, version: str, data_params: dict, sft_params: dict,
                   make_records: Callable[[], dict[str, list]], to_jsonl: Callable[[list], bytes],
                   save_sft: Callable[[dict[str, list]], dict], seconds: Callable[[bool], float],
                   progress: bool) -> None:
    """The build driver of every embedded task: compare the manifest of the last build (``version``) with the
    parameters, rewrite the stale splits (``make_records()`` → ``to_jsonl`` per split), retrain the SFT model
    when needed (``save_sft(records)`` → its stats), then write the manifest; announce the build (``seconds``:
    its estimated length, given whether SFT is retrained) and its end when ``progress``."""
    old = _read_manifest(files.manifest, version)
    digests, stale, retrain = outdated(files, old, data_params, sft_params)
    if not stale and not retrain:
        return
    log.info("building %s task in %s (splits: %s, retrain SFT: %s)", title, files.root, stale, retrain)
    start = time.perf_counter()
    if progress:
        why = "first run only" if not old else "its files are missing or out of date"
        _say(f"Building the embedded {title} task under {files.root} ({_what(stale, retrain, old)}; {why}, "
             f"{_about(seconds(retrain))})")
    records = make_records()
    new_digests = {}
    for name in SPLITS:
        data = to_jsonl(records[name])
        new_digests[name] = _sha256(data)
        if name in stale:
            _write_atomic(files.split(name), data)
    if new_digests != digests:
        retrain = True  # the data changed under the saved model (or was never recorded)
    sft_stats = save_sft(records) if retrain else old.get("sft_stats", {})
    manifest = {"version": version, "data": data_params, "sft": sft_params, "digests": new_digests,
                "sft_stats": sft_stats}
    _write_atomic(files.manifest, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    if progress:
        loss = f", SFT final loss {sft_stats['final_loss']:.3f}" if retrain and "final_loss" in sft_stats else ""
        _say(f"Built the embedded {title} task under {files.root} in {time.perf_counter() - start:.0f} s{loss}")


def _what(stale: Sequence[str], retrain: bool, old: dict) -> str:
    if not old:
        return "data, tokenizer and SFT warm start"
    parts = [f"{', '.join(stale)} split{'s' if len(stale) > 1 else ''}"] if stale else []
    return " and ".join(parts + (["tokenizer and SFT warm start"] if retrain else []))


def _about(seconds: float) -> str:
    if seconds < 45:
        return "a few seconds" if seconds < 15 else "under a minute"
    minutes = round(seconds / 30) / 2  # to the half minute
    return f"about {minutes:g} min"


def _say(line: str) -> None:
    """A line of the build's progress (printed by the process that builds, where its bars go too)."""
    print(line, file=sys.stderr, flush=True)
