"""Checkpoint writes: a failed write leaves the previous file whole and no temp file behind (damaged, unsafe
or foreign checkpoints given to --ckpt_path: tests/fuzz/test_fuzz_checkpoints.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from rlhf_lightning.checkpoint_io import OutputNotWritten, SafeCheckpointIO


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
    with pytest.raises(OutputNotWritten, match="No space left on device; .* is still the previous, complete version"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(4)}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temp file left


def test_a_temp_file_left_by_a_killed_writer_is_removed_by_the_next_save(tmp_path):
    stale = tmp_path / ".last.ckpt.abc123.partial"
    stale.write_bytes(b"half of a checkpoint whose writer was killed")
    SafeCheckpointIO().save_checkpoint({"step": 3}, tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_written_files_follow_the_umask_not_the_temp_file_mode(tmp_path):
    """``give_user_file_mode`` gives the mode ``open()`` would (never wider than the user's umask allows)."""
    import os

    from rlhf_lightning.checkpoint_io import give_user_file_mode

    folder = tmp_path / "export"
    (folder / "sub").mkdir(parents=True)
    for name in ("model.safetensors", "sub/tokenizer.json"):
        (folder / name).write_text("x")
        os.chmod(folder / name, 0o600)
    previous = os.umask(0o027)
    try:
        give_user_file_mode(folder)
    finally:
        os.umask(previous)
    assert [oct((folder / name).stat().st_mode & 0o777) for name in ("model.safetensors", "sub/tokenizer.json")] == [
        "0o640", "0o640"]
    assert os.umask(previous) == previous  # the umask is left as it was
