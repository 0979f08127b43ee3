"""Fuzz: a run killed while it writes (``kill_driver.py`` runs the CLI in a subprocess and SIGKILLs it halfway
through the write), or sent SIGTERM or Ctrl-C while it trains.

After a kill: every checkpoint under a name resume would load is whole (the one being written is a
``.partial`` temp file next to it, removed by the next save), nothing half-written is under ``policy/``,
and ``--ckpt_path last`` resumes (taking over the dead run's lock) and ends where an uninterrupted run does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from faults import checkpointing, expect_exit
from rlhf_lightning.cli import main
from rlhf_lightning.module import RLHFModule
from runs import tiny_run_args, without_evaluation

FUZZ = Path(__file__).parent
EXPORT = ["--trainer.callbacks+=rlhf_lightning.callbacks.ExportPolicy"]
BATCHES = 4  # × 2 inner epochs: 8 optimizer steps, a checkpoint every 2


def _args(model: Path, data: dict, root: Path, checkpoints: Path) -> list[str]:
    return without_evaluation(tiny_run_args(model, data, root, batches=BATCHES,
                                            extra=checkpointing(checkpoints.parent, keep=0) + EXPORT))


def _killed_run(fault: str, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FUZZ), str(FUZZ.parent)]), "OMP_NUM_THREADS": "1",
           "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, str(FUZZ / "kill_driver.py"), fault, *args], capture_output=True,
                          text=True, env=env, timeout=300)


def _loadable(folder: Path) -> list[int]:
    """The global step of every checkpoint under a name resume would load (each must load and be finite)."""
    steps = []
    for path in sorted(folder.glob("*.ckpt")):
        checkpoint = torch.load(path, weights_only=True)
        assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values()), path
        steps.append(checkpoint["global_step"])
    return steps


@pytest.fixture(scope="module")
def uninterrupted(tiny_model, tiny_data, tmp_path_factory) -> dict:
    """The exported weights of the same run, never killed."""
    root = tmp_path_factory.mktemp("uninterrupted")
    main(_args(tiny_model, tiny_data, root, root / "checkpoints"))
    return load_file(root / "policy" / "model.safetensors")


def _checkpoint_folders(tmp_path: Path) -> list[Path]:
    """The run's own folder, and ``/dev/shm`` when it is another filesystem than the temp folder (Lightning's
    own save would move a temp file across them, a copy a kill truncates)."""
    folders = [tmp_path / "run" / "checkpoints"]
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != tmp_path.stat().st_dev:
        folders.append(shm / f"rlhf-fuzz-{os.getpid()}-{tmp_path.name}" / "checkpoints")
    return folders


@pytest.mark.parametrize("where", ["run folder", "another filesystem"])
def test_killed_while_writing_a_checkpoint(where, tiny_model, tiny_data, tmp_path, uninterrupted):
    folders = _checkpoint_folders(tmp_path)
    if where == "another filesystem" and len(folders) == 1:
        folders.append(tmp_path / "elsewhere" / "checkpoints")  # no second filesystem here: another folder
    checkpoints = folders[0] if where == "run folder" else folders[1]
    root = tmp_path / "run"
    try:
        killed = _killed_run("save:2", _args(tiny_model, tiny_data, root, checkpoints))
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        assert _loadable(checkpoints) == [2]  # last.ckpt: the first save, whole; the second was cut off
        assert len(list(checkpoints.glob(".last.ckpt.*.partial"))) == 1  # the cut-off write, under a temp name
        assert (root / ".run.lock").exists()  # the dead process's lock

        main(_args(tiny_model, tiny_data, root, checkpoints) + ["--ckpt_path", "last"])
        assert _loadable(checkpoints) == [8]
        assert not list(checkpoints.glob("*.partial")) and not (root / ".run.lock").exists()
        assert json.loads((root / "summary.json").read_text())["rollout_batches"] == BATCHES
        resumed = load_file(root / "policy" / "model.safetensors")
        assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)  # the same run in the end
    finally:
        if checkpoints.is_relative_to("/dev/shm"):
            subprocess.run(["rm", "-rf", str(checkpoints.parent)])


def test_killed_while_writing_the_first_checkpoint(tiny_model, tiny_data, tmp_path, capsys):
    root = tmp_path / "run"
    args = _args(tiny_model, tiny_data, root, root / "checkpoints")
    assert _killed_run("save:1", args).returncode == -signal.SIGKILL
    assert _loadable(root / "checkpoints") == []
    message = expect_exit(args + ["--ckpt_path", "last"], capsys)  # nothing to resume: a new run, refused here
    assert "--ckpt_path last found no last checkpoint to resume" in message and "overwrite" in message
    main(args + ["--ckpt_path", "last", "--overwrite", "true"])
    assert _loadable(root / "checkpoints") == [8]


def test_killed_while_exporting(tiny_model, tiny_data, tmp_path, uninterrupted):
    root = tmp_path / "run"
    args = _args(tiny_model, tiny_data, root, root / "checkpoints")
    assert _killed_run("export", args).returncode == -signal.SIGKILL
    assert not (root / "policy").exists() and (root / "policy.partial").is_dir()  # never half under its name
    main(args + ["--ckpt_path", "last"])  # the last batch's checkpoint: trains nothing more, exports again
    assert not (root / "policy.partial").exists()
    exported = load_file(root / "policy" / "model.safetensors")
    assert all(torch.equal(exported[k], uninterrupted[k]) for k in uninterrupted)


@pytest.mark.parametrize("sig, code, saved", [(signal.SIGTERM, 143, [6]), (signal.SIGINT, 130, [4])])
def test_signalled_while_training(sig, code, saved, tiny_model, tiny_data, tmp_path, capsys, monkeypatch,
                                  uninterrupted):
    """SIGTERM (a scheduler's notice: batch 3 finishes first) or Ctrl-C (stops at once) at batch 3, sent to this
    process: one message, exit code 128 + the signal, the lock released, and the run resumes."""
    real_step, calls = RLHFModule.training_step, [0]

    def training_step(self, batch, batch_idx):
        calls[0] += 1
        if calls[0] == 3:
            os.kill(os.getpid(), sig)
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(RLHFModule, "training_step", training_step)
    root = tmp_path / "run"
    args = _args(tiny_model, tiny_data, root, root / "checkpoints")
    message = expect_exit(args, capsys, code=code)
    assert f"received {signal.Signals(sig).name}" in message and "at rollout batch 3" in message, message
    assert "--ckpt_path last" in message and not (root / ".run.lock").exists()
    assert _loadable(root / "checkpoints") == saved  # Ctrl-C: after batch 2; SIGTERM lets batch 3 finish
    main(args + ["--ckpt_path", "last"])
    resumed = load_file(root / "policy" / "model.safetensors")
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
