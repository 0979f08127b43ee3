"""Checkpoints: a failed write leaves the previous file whole and no temp file behind; a damaged or unsafe
checkpoint given to --ckpt_path is one clear message."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from rlhf_lightning.checkpoint_io import SafeCheckpointIO
from rlhf_lightning.cli import main
from runs import tiny_run_args, without_evaluation


def test_the_temp_file_is_written_next_to_the_checkpoint(tmp_path, monkeypatch):
    moves = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (moves.append((Path(src), Path(dst))), real_replace(src, dst)))
    SafeCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "ckpts" / "last.ckpt")
    (source, target), = moves
    assert source.parent == target.parent == tmp_path / "ckpts"  # one filesystem: the rename is atomic
    assert torch.load(target, weights_only=True) == {"step": 1}


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = SafeCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(4)}, path)
    before = path.read_bytes()

    def disk_full(obj, file, *args, **kwargs):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(4)}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temp file left


def test_a_temp_file_left_by_a_killed_writer_is_removed_by_the_next_save(tmp_path):
    stale = tmp_path / ".last.ckpt.abc123.partial"
    stale.write_bytes(b"half of a checkpoint whose writer was killed")
    SafeCheckpointIO().save_checkpoint({"step": 3}, tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def _checkpointing(root: Path) -> list[str]:
    return ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            "--trainer.callbacks.dirpath", str(root / "checkpoints"), "--trainer.callbacks.save_last", "true",
            "--trainer.callbacks.save_top_k", "-1", "--trainer.callbacks.every_n_train_steps", "2"]


def _resume_error(args: list[str], ckpt: Path, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--ckpt_path", str(ckpt)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err and "weights_only=False" not in err, err
    return err


def test_damaged_or_unsafe_checkpoints_are_one_message(tiny_model, tiny_data, tmp_path, capsys):
    args = without_evaluation(tiny_run_args(tiny_model, tiny_data, tmp_path, batches=2, extra=_checkpointing(tmp_path)))
    main(args)
    folder = tmp_path / "checkpoints"
    last = folder / "last.ckpt"
    good = [p for p in folder.glob("*.ckpt") if p != last]
    assert good

    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # truncated, as a copy killed half-way would leave it
    err = _resume_error(args, last, capsys)
    assert "rlhf-lightning: error in the recipe: ckpt_path:" in err and "cannot be read" in err, err
    assert f"--ckpt_path {max(good, key=lambda p: p.stat().st_mtime)}" in err, err

    last.write_bytes(b"")  # an empty file
    assert "cannot be read" in _resume_error(args, last, capsys)

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    unsafe = folder / "unsafe.ckpt"
    with unsafe.open("wb") as handle:
        pickle.dump({"state_dict": {}, "payload": Payload()}, handle)
    torch.save({"state_dict": {}, "payload": Payload()}, unsafe)
    err = _resume_error(args, unsafe, capsys)
    assert "is not loaded" in err or "are not loaded" in err, err
    assert "pwned" not in err
