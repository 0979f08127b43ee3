"""Fuzz: a full disk. The checkpoint folder (or the whole run folder) is put on a small disk of its own: a
tmpfs mounted for the test where the machine allows it (a real ``ENOSPC``, and a filesystem other than the
system temp folder's), else the same folder under a file-size limit (``RLIMIT_FSIZE``: ``EFBIG``). A write
that does not fit stops the run with one message naming the file (exit code 3); the previous checkpoint
stays whole under its name, no temp file is left, and the run resumes once there is room.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from faults import LEFTOVERS, checkpointing, expect_exit
from rlhf_lightning.cli import main
from runs import tiny_run_args, without_evaluation

MB = 2**20


@pytest.fixture(params=["tmpfs", "file-size limit"])
def disk_kind(request) -> str:
    return request.param


@contextlib.contextmanager
def small_disk(path: Path, size: int, kind: str = "tmpfs"):
    """``path`` on a disk of ``size`` bytes for the duration (see the module docstring); yields the kind used
    (a tmpfs falls back to the file-size limit where mounting is not allowed)."""
    path.mkdir(parents=True)
    mounted = kind == "tmpfs" and subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                                 capture_output=True).returncode == 0
    if mounted:
        try:
            yield "tmpfs"
        finally:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield "file-size limit"
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def _args(model: Path, data: dict, root: Path, checkpoints: Path | None, extra: list[str] = (),
          batches: int = 4) -> list[str]:
    ckpt = [] if checkpoints is None else checkpointing(checkpoints.parent, keep=0)
    return without_evaluation(tiny_run_args(model, data, root, batches=batches, extra=ckpt + list(extra)))


def _no_leftovers(folder: Path) -> None:
    assert not [p for pattern in LEFTOVERS for p in folder.glob(pattern)], list(folder.iterdir())


def test_a_checkpoint_that_does_not_fit_leaves_the_previous_one(tiny_model, tiny_data, tmp_path, capsys,
                                                                 disk_kind):
    """The first ``last.ckpt`` (290 KB) fits on a 1 MB disk; the second (2 MB larger) does not."""
    disk = tmp_path / "disk"
    grow = ["--trainer.callbacks+=fault_code.GrowingCheckpoint"]
    with small_disk(disk, MB, disk_kind) as kind:
        message = expect_exit(_args(tiny_model, tiny_data, tmp_path / "run", disk / "checkpoints", grow), capsys,
                              code=3)
        assert f"cannot write '{disk / 'checkpoints' / 'last.ckpt'}'" in message, (kind, message)
        assert "is still the previous, complete version" in message and "--ckpt_path last" in message
        _no_leftovers(disk / "checkpoints")
        assert torch.load(disk / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
        saved = (disk / "checkpoints" / "last.ckpt").read_bytes()
    # room again (the checkpoints moved to a disk with room): the run resumes from the good checkpoint
    room = tmp_path / "room" / "checkpoints"
    room.mkdir(parents=True)
    (room / "last.ckpt").write_bytes(saved)
    main(_args(tiny_model, tiny_data, tmp_path / "run", room) + ["--ckpt_path", "last"])
    newest = max(room.glob("last*.ckpt"), key=lambda p: p.stat().st_mtime)  # last-v1.ckpt: the file was moved
    assert torch.load(newest, weights_only=True)["global_step"] == 8


def test_the_first_checkpoint_does_not_fit(tiny_model, tiny_data, tmp_path, capsys, disk_kind):
    disk = tmp_path / "disk"
    with small_disk(disk, 128 * 1024, disk_kind):  # the checkpoint: 290 KB
        message = expect_exit(_args(tiny_model, tiny_data, tmp_path / "run", disk / "checkpoints"), capsys, code=3)
        assert "cannot write" in message and "last.ckpt" in message, message
        assert "nothing was left under its name" in message, message
        assert not list((disk / "checkpoints").glob("*")), list((disk / "checkpoints").iterdir())


def test_an_export_that_does_not_fit_leaves_no_half_written_policy(tiny_model, tiny_data, tmp_path, capsys,
                                                                   disk_kind):
    """The run folder on a 64 KB disk: the exported weights (86 KB) do not fit."""
    root = tmp_path / "disk"
    with small_disk(root, 64 * 1024, disk_kind):
        message = expect_exit(_args(tiny_model, tiny_data, root, None, [
            "--trainer.callbacks+=rlhf_lightning.callbacks.ExportPolicy", "--trainer.logger", "false",
            "--trainer.enable_checkpointing", "false"], batches=1),
            capsys, code=3)
        assert f"cannot write '{root / 'policy.partial'}" in message, message
        assert not (root / "policy").exists()
        _no_leftovers(root)
