"""Single-file checkpoints that a crash or a full disk cannot truncate, and one clear message for a bad one.

Lightning's save writes the file in the system temp folder and moves it; when the checkpoint folder is on
another filesystem the move is a copy that truncates the target first, so a kill during it leaves a
truncated ``last.ckpt``. :class:`SafeCheckpointIO` writes a temp file next to the target, flushes and
fsyncs it, renames it over the target (atomic within one filesystem) and fsyncs the folder; on any failure
the temp file is removed and the previous checkpoint stays as it was (a temp file left by a killed process is
removed by the next save; the run folder's lock keeps other writers out).
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

from rlhf_lightning.errors import RecipeError
from rlhf_lightning.guards import TrainingStopped

FIELD = "ckpt_path"


class OutputNotWritten(TrainingStopped):
    """A run's output could not be written (a full disk, a file-size limit, a read-only folder): the run stops
    with one message naming the file; what was there before stays as it was."""

    def __init__(self, path: Path, error: OSError, kept: Optional[Path] = None) -> None:
        reason = error.strerror or type(error).__name__
        before = (f"; '{kept}' is still the previous, complete version" if kept is not None
                  else "; nothing was left under its name")
        super().__init__(f"cannot write '{path}': {reason}{before}\n"
                         "  fix: free space on that disk (or point the output at a disk with room), then resume with "
                         "--ckpt_path last")


def os_error_in(error: BaseException) -> Optional[OSError]:
    """``error`` or the first ``OSError`` along its chain of causes, or the one a message reports as
    ``(os error N)``; ``None`` if there is none."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        code = re.search(r"\(os error (\d+)\)", str(error))  # safetensors' Rust writer reports errno in its text
        if code:
            return OSError(int(code.group(1)), os.strerror(int(code.group(1))))
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def user_file_mode() -> int:
    """The mode ``open()`` gives a new file under this process's umask (0o644 under the usual 022)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def give_user_file_mode(path: Path) -> None:
    """``chmod`` the file ``path`` (or every file below the folder ``path``) to :func:`user_file_mode`:
    temporary-file writers (``mkstemp``, safetensors) create files only their owner can read, which would
    keep a checkpoint or an exported model from the user's group."""
    mode = user_file_mode()
    for file in (path.rglob("*") if path.is_dir() else [path]):
        if file.is_file() and not file.is_symlink():
            os.chmod(file, mode)


class SafeCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with a same-folder temp file, fsync and rename for local paths."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in target.parent.glob(f".{target.name}.*.partial"):  # left by a writer that was killed
            stale.unlink(missing_ok=True)
        handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            give_user_file_mode(Path(temp))
            os.replace(temp, target)
        except Exception as error:  # torch's zip writer may raise its own error on top of the OSError
            Path(temp).unlink(missing_ok=True)
            cause = os_error_in(error)
            if cause is None:
                raise
            raise OutputNotWritten(target, cause, kept=target if target.exists() else None) from None
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def load_checkpoint(self, path, map_location: Optional[Callable] = lambda storage, loc: storage,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        try:
            checkpoint = super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except Exception as error:
            problem = read_problem(Path(path), error)
            if problem is None:
                raise
            raise problem from None
        if not isinstance(checkpoint, dict) or "pytorch-lightning_version" not in checkpoint:
            raise RecipeError(FIELD, f"'{path}' is not a checkpoint of a training run (it has no Lightning training "
                                     "state)", "give a checkpoint that ModelCheckpoint wrote, e.g. --ckpt_path last")
        return checkpoint


def read_problem(path: Path, error: BaseException) -> Optional[RecipeError]:
    """The one-line error for a checkpoint ``torch.load`` could not read (``None`` for other errors): refused
    because it would run code when unpickled, or truncated/damaged (naming the newest other checkpoint)."""
    if is_safetensors(path):
        return RecipeError(FIELD, f"'{path}' is a safetensors weights file, not a training checkpoint (it holds no "
                                  "optimizer, step or data position)",
                           "to start from these weights set model.init_args.policy.path to its folder; to resume, "
                           "give a .ckpt that ModelCheckpoint wrote")
    if isinstance(error, pickle.UnpicklingError) and "unsupported global" in str(error).lower():
        return RecipeError(FIELD, f"'{path}' holds objects other than tensors and plain values, which are not "
                                  "loaded (a checkpoint that runs code when loaded is refused)",
                           "resume from a checkpoint this library wrote")
    if isinstance(error, (FileNotFoundError, RecipeError)) or not isinstance(error, Exception):
        return None
    # anything else torch.load raises is the file's fault: unpickling garbage gives EOFError, UnpicklingError,
    # KeyError (a memo index), IndexError, struct.error, ValueError, ... depending on the bytes
    return damaged(path, error)


def is_safetensors(path: Path) -> bool:
    """Whether ``path`` is a safetensors file (an 8-byte header length, then a JSON header)."""
    try:
        with open(path, "rb") as file:
            head = file.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000


def _other_checkpoints(path: Path) -> list[Path]:
    """The other non-empty checkpoint files of ``path``'s folder, newest first."""
    return sorted((p for p in path.parent.glob("*.ckpt") if p.resolve() != path.resolve() and p.is_file()
                   and p.stat().st_size > 0), key=lambda p: p.stat().st_mtime, reverse=True)


def damaged(path: Path, error: BaseException) -> RecipeError:
    """The error for a checkpoint that cannot be read, naming the other checkpoints of its folder."""
    others = _other_checkpoints(path)
    fix = (f"resume from the newest other checkpoint: --ckpt_path {others[0]}" if others
           else "no other checkpoint is in its folder: start the run afresh")
    text = str(error)
    unpickler = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)  # not the advice around it
    reason = (unpickler.group(1) if unpickler else text.splitlines()[0] if text else type(error).__name__)[:120]
    return RecipeError(FIELD, f"'{path}' cannot be read (truncated or damaged: {reason})", fix)


def install(strategy) -> None:
    """Use :class:`SafeCheckpointIO` where the strategy would use Lightning's plain ``TorchCheckpointIO``."""
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = SafeCheckpointIO()


def nothing_left_to_train(checkpoint: dict[str, Any], max_epochs: Optional[int], max_steps: int,
                          limit_train_batches: Any = None) -> Optional[RecipeError]:
    """The error for resuming a checkpoint whose run already reached this trainer's ``max_epochs`` or
    ``max_steps`` (Lightning would train 0 batches and end as if it had succeeded); ``None`` otherwise.

    A checkpoint written at the end of an epoch, or at its last batch, counts that epoch as done: a larger
    ``limit_train_batches`` does not reopen it, only a larger ``max_epochs`` (a further pass over the prompts)
    trains on. (Resuming the last batch's checkpoint with the same settings is allowed: it trains nothing but
    runs the end of the run again, e.g. an export a crash interrupted.)
    """
    fit_loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    epochs = (fit_loop.get("epoch_progress") or {}).get("current", {}).get("processed")
    batch_progress = fit_loop.get("epoch_loop.batch_progress") or {}
    batches = batch_progress.get("current", {}).get("processed")
    step = int(checkpoint.get("global_step") or 0)
    limited = max_epochs is not None and max_epochs >= 0 and epochs is not None
    reopened = (isinstance(limit_train_batches, int) and not isinstance(limit_train_batches, bool)
                and batches is not None and limit_train_batches > batches)
    more = (f"; its last epoch ended after {batches} batches, and a larger limit_train_batches "
            f"({limit_train_batches}) does not reopen a finished epoch" if reopened else "")
    fix = (f"to train on, raise trainer.max_epochs above {max_epochs} (each further epoch is a new pass over the "
           "prompts), or start a new run in another trainer.default_root_dir")
    if limited and epochs >= max_epochs:
        return RecipeError(FIELD, f"the checkpoint is from the end of a run that finished its {epochs} epoch(s) "
                                  f"(trainer.max_epochs: {max_epochs}), so resuming it would train nothing{more}", fix)
    if limited and batch_progress.get("is_last_batch") and epochs + 1 >= max_epochs and reopened:
        return RecipeError(FIELD, f"the checkpoint is from the last batch of the run's last epoch (trainer.max_epochs: "
                                  f"{max_epochs}), so resuming it would train nothing{more}", fix)
    if max_steps is not None and max_steps >= 0 and step >= max_steps:
        return RecipeError(FIELD, f"the checkpoint is at optimizer step {step}, which already reaches "
                                  f"trainer.max_steps: {max_steps}, so resuming it would train nothing",
                           f"to train on, raise trainer.max_steps above {step}")
    return None


def state_problem(saved: dict[str, Any], expected: dict[str, Any], path: Optional[str]) -> Optional[RecipeError]:
    """The error for a checkpoint whose weights do not fit the recipe's models (other keys or shapes: another
    model, objective, critic or LoRA setting), or are not finite (written from a diverged state)."""
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    reshaped = [key for key in sorted(set(saved) & set(expected))
                if hasattr(saved[key], "shape") and tuple(saved[key].shape) != tuple(expected[key].shape)]
    where = f"'{path}'" if path else "the checkpoint"
    if missing or unexpected or reshaped:
        parts = [f"{len(keys)} {label} (e.g. '{keys[0]}'{detail(keys[0])})" for keys, label, detail in (
            (missing, "weights it lacks", lambda k: ""),
            (unexpected, "weights the recipe's models do not have", lambda k: ""),
            (reshaped, "of another shape", lambda k: f": {list(saved[k].shape)} saved, {list(expected[k].shape)} here"))
            if keys]
        return RecipeError(FIELD, f"{where} does not fit this recipe's models: {'; '.join(parts)}",
                           "resume with the recipe it was written with (the run's config.yaml), or start a new run")
    broken = {key: int((~torch.isfinite(value)).sum()) for key, value in saved.items()
              if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()}
    if broken:
        first = next(iter(broken))
        others = _other_checkpoints(Path(path)) if path else []
        fix = (f"resume from an earlier checkpoint: --ckpt_path {others[0]}" if others
               else "start the run afresh from the model")
        return RecipeError(FIELD, f"{where} holds {sum(broken.values())} non-finite weights in {len(broken)} tensors "
                                  f"(e.g. '{first}'): it was written from a diverged state", fix)
    return None
