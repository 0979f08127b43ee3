"""Fuzz: resuming from checkpoints that are missing, damaged, unsafe, of another recipe, diverged, or of a run
that has already finished. Each case resumes the finished run in ``run_root`` (checkpoints at steps 2 and 4,
``last.ckpt``) and must end in one message (exit code 2) with that run's files unchanged."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from faults import checkpointing, expect_fault
from runs import chat_model_dir, tiny_run_args, without_evaluation

PPO = ["--model.objective", "rlhf_lightning.objectives.ppo.PPO"]


def _resume_args(model: Path, data: dict, root: Path, ckpt: str, extra: list[str] = (), batches: int = 2,
                 objective: list[str] | None = None) -> list[str]:
    """The finished run's own arguments (2 rollout batches, checkpoints), resumed from ``ckpt``."""
    kwargs = {"objective": objective} if objective is not None else {}
    args = tiny_run_args(model, data, root, batches=batches, extra=checkpointing(root) + list(extra), **kwargs)
    return without_evaluation(args) + ["--ckpt_path", ckpt]


class _RunsCode:
    """A pickle payload that would create ``marker`` when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write(root: Path, name: str, write) -> str:
    path = root / "checkpoints" / name
    write(path)
    return str(path)


def _truncate(path: Path) -> None:
    data = (path.parent / "last.ckpt").read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _non_finite(path: Path) -> None:
    checkpoint = torch.load(path.parent / "epoch=0-step=2.ckpt", weights_only=True)
    checkpoint["state_dict"] = {key: value * float("nan") for key, value in checkpoint["state_dict"].items()}
    torch.save(checkpoint, path)


def _epoch_done(path: Path) -> None:
    """``last.ckpt`` as ModelCheckpoint writes it at the end of an epoch (the epoch counted as processed)."""
    checkpoint = torch.load(path.parent / "last.ckpt", weights_only=True)
    checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] = 1
    torch.save(checkpoint, path)


# name → (build ckpt_path and extra args from (model, data, root, tmp), text of the message)
CASES = {
    "missing file": (lambda m, d, r, t: (str(t / "nope.ckpt"), []), "does not exist"),
    "a folder": (lambda m, d, r, t: ((t / "dir.ckpt").mkdir() or str(t / "dir.ckpt"), []), "cannot be read"),
    "a pickle of another shape": (lambda m, d, r, t: (_write(r, "other.ckpt", lambda p: torch.save({"foo": 1}, p)), []),
                                  "is not a checkpoint of a training run"),
    "truncated last.ckpt": (lambda m, d, r, t: (_write(r, "last.ckpt", _truncate), []),
                            "cannot be read (truncated or damaged"),
    "empty last.ckpt": (lambda m, d, r, t: (_write(r, "last.ckpt", lambda p: p.write_bytes(b"")), []),
                        "cannot be read"),
    "random bytes": (lambda m, d, r, t: (_write(r, "noise.ckpt", lambda p: p.write_bytes(os.urandom(4096))), []),
                     "cannot be read"),
    "a pickle reading a memo it never wrote": (  # the unpickler's KeyError (random bytes hit it now and then)
        lambda m, d, r, t: (_write(r, "memo.ckpt", lambda p: p.write_bytes(b"\x80\x02h\x05.")), []),
        "cannot be read"),
    "a safetensors file": (lambda m, d, r, t: (str(r / "policy" / "model.safetensors"), []),
                           "is a safetensors weights file, not a training checkpoint"),
    "an epoch-end checkpoint of a finished run": (lambda m, d, r, t: (_write(r, "end.ckpt", _epoch_done), []),
                                                  "finished its 1 epoch(s)"),
    "a pickle that runs code": (lambda m, d, r, t: (_write(r, "unsafe.ckpt", lambda p: torch.save(
        {"state_dict": {}, "payload": _RunsCode(t / "pwned")}, p)), []), "are not loaded"),
    "a plain pickle that runs code": (lambda m, d, r, t: (_write(r, "unsafe.pkl.ckpt", lambda p: p.write_bytes(
        pickle.dumps({"payload": _RunsCode(t / "pwned")}))), []), "cannot be read"),
    "non-finite weights": (lambda m, d, r, t: (_write(r, "diverged.ckpt", _non_finite), []),
                           "non-finite weights in 21 tensors"),
    "of another model": (lambda m, d, r, t: (str(r / "checkpoints" / "epoch=0-step=2.ckpt"),
                                             ["--model.policy.path", str(chat_model_dir(t)),
                                              "--data.tokenizer", str(chat_model_dir(t))]),
                         "does not fit this recipe's models: 2 of another shape"),
    "resumed with a critic it lacks": (lambda m, d, r, t: (str(r / "checkpoints" / "epoch=0-step=2.ckpt"),
                                                           ["--model.critic.path", str(m)]),
                                       "weights it lacks (e.g. 'critic."),
    "a full checkpoint resumed under LoRA": (lambda m, d, r, t: (str(r / "checkpoints" / "epoch=0-step=2.ckpt"),
                                                                 ["--model.policy.lora.r", "4"]),
                                             "does not fit this recipe's models"),
    "a finished run with more batches": (lambda m, d, r, t: ("last", ["--trainer.limit_train_batches", "4"]),
                                         "does not reopen a finished epoch"),
    "max_steps already reached": (lambda m, d, r, t: (str(r / "checkpoints" / "epoch=0-step=2.ckpt"),
                                                      ["--trainer.max_steps", "2"]),
                                  "already reaches trainer.max_steps: 2"),
    "best in a new process": (lambda m, d, r, t: ("best", []), "a new run has written none"),
    "hpc without SLURM checkpoints": (lambda m, d, r, t: ("hpc", []), "no SLURM checkpoint"),
    "last with the checkpoints deleted": (lambda m, d, r, t: (shutil.rmtree(r / "checkpoints") or "last", []),
                                          "--ckpt_path last found no last checkpoint to resume"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_resume_is_one_message(case, tiny_model, tiny_data, run_root, tmp_path, capsys):
    build, text = CASES[case]
    ckpt, extra = build(tiny_model, tiny_data, run_root, tmp_path)
    objective = PPO if "critic" in case else None
    message = expect_fault(_resume_args(tiny_model, tiny_data, run_root, ckpt, extra, objective=objective), capsys,
                           text, protect=run_root)
    assert message.startswith(("rlhf-lightning: error in the recipe: ckpt_path:",
                               "rlhf-lightning: error in the recipe: trainer.default_root_dir:")), message
    assert not (tmp_path / "pwned").exists()  # nothing in a checkpoint ran


def test_a_damaged_last_names_the_newest_good_checkpoint(tiny_model, tiny_data, run_root, capsys):
    last = run_root / "checkpoints" / "last.ckpt"
    _truncate(last)
    newest = max((p for p in last.parent.glob("*.ckpt") if p != last), key=lambda p: p.stat().st_mtime)
    expect_fault(_resume_args(tiny_model, tiny_data, run_root, str(last)), capsys,
                 f"--ckpt_path {newest}", protect=run_root)


def test_resuming_the_last_batch_with_the_same_settings_only_finishes_the_run(tiny_model, tiny_data, run_root):
    """``last.ckpt`` written at the final batch: a resume trains nothing more and runs the end again (the
    export a crash may have interrupted), and the summary still counts the whole run."""
    import json

    from rlhf_lightning.cli import main

    shutil.rmtree(run_root / "policy")
    args = _resume_args(tiny_model, tiny_data, run_root, "last",
                        ["--trainer.callbacks+=rlhf_lightning.callbacks.ExportPolicy"])
    main(args)
    assert torch.load(run_root / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    assert json.loads((run_root / "summary.json").read_text())["rollout_batches"] == 2
    assert (run_root / "policy" / "model.safetensors").exists()
