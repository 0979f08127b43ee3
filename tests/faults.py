"""The fuzz suite's contract for one bad input or fault (``tests/fuzz``): the exit code, one message, and
nothing lost.

Each case runs into a folder that already holds a finished run (:func:`previous_run_folder`: summary,
samples, evaluation history, checkpoints, exported policy), with ``--overwrite true`` where the case starts a
new run: whatever goes wrong, every file of that run must be there afterwards, byte for byte, and the folder
must hold no lock, no ``.partial`` temp file and no ``.replaced`` folder.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Sequence

import pytest

from rlhf_lightning.cli import main
from runs import tiny_run_args, without_evaluation

HEADLINES = {2: "rlhf-lightning: error", 3: "rlhf-lightning: training stopped:"}  # and 128 + N: a signal
LEFTOVERS = (".run.lock", "*.partial", ".replaced", "**/*.partial")


def checkpointing(root: Path, every: int = 2, keep: int = -1) -> list[str]:
    """Arguments for ``ModelCheckpoint`` (every ``every`` optimizer steps, ``last.ckpt`` too) under ``root``."""
    return ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            "--trainer.callbacks.dirpath", str(root / "checkpoints"), "--trainer.callbacks.save_last", "true",
            "--trainer.callbacks.save_top_k", str(keep), "--trainer.callbacks.every_n_train_steps", str(every)]


def finished_run_args(model: Path, data: dict, root: Path, batches: int = 2) -> list[str]:
    """A complete tiny run with checkpoints, evaluation and an exported policy."""
    return tiny_run_args(model, data, root, batches=batches,
                         extra=checkpointing(root) + ["--trainer.callbacks+=rlhf_lightning.callbacks.ExportPolicy"])


def bare_run_args(model: Path, data: dict, root: Path, batches: int = 1) -> list[str]:
    """One rollout batch, no evaluation or checkpoints: the cheapest run a fault can be put into."""
    return without_evaluation(tiny_run_args(model, data, root, batches=batches))


def previous_run_folder(template: Path, tmp: Path) -> Path:
    """A copy of the finished run in ``template``, for one case to run into."""
    root = tmp / "run"
    shutil.copytree(template, root)
    return root


def snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (by relative path)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_nothing_lost(root: Path, before: dict[str, str], changed_ok: Sequence[str] = ()) -> None:
    """Every file of ``before`` is still in ``root`` unchanged (except ``changed_ok`` prefixes), and the folder
    holds no lock, temp file or folder of replaced outputs."""
    after = snapshot(root)
    lost = [name for name in before if name not in after and not name.startswith(tuple(changed_ok))]
    changed = [name for name in before if name in after and after[name] != before[name]
               and not name.startswith(tuple(changed_ok))]
    assert not lost and not changed, f"lost: {lost}, changed: {changed}"
    left = sorted({str(p.relative_to(root)) for pattern in LEFTOVERS for p in root.glob(pattern)})
    assert not left, f"left behind: {left}"


def expect_exit(args: list[str], capsys, code: int = 2) -> str:
    """Run ``main(args)``: it must exit with ``code`` and print one headline (and at most a fix and a cause
    under it), no traceback and no advice to turn off safe loading; returns the message from the headline."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == code, err
    assert "Traceback" not in err and "weights_only=False" not in err, err
    headlines = [line for line in err.splitlines() if line.startswith(HEADLINES.get(code, HEADLINES[3]))]
    assert len(headlines) == 1, err
    message = err[err.index(headlines[0]):]
    assert len(message.splitlines()) <= 3, err  # the message, its fix or likely cause, nothing more
    return message


def expect_fault(args: list[str], capsys, text: str, protect: Path, code: int = 2,
                 changed_ok: Sequence[str] = ()) -> str:
    """:func:`expect_exit`, the message contains ``text``, and nothing in ``protect`` was lost."""
    before = snapshot(protect)
    message = expect_exit(args, capsys, code)
    assert text in message, message
    assert_nothing_lost(protect, before, changed_ok)
    return message
