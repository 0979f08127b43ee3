"""One run, one folder: a new run does not write over another run's outputs, and two runs never share one.

A run's outputs live in ``trainer.default_root_dir``. Starting a run (not a resume) in a folder that
already holds another run's outputs is an error unless the recipe says ``overwrite: true``: then those
outputs are moved into ``.replaced/`` first, so that nothing of the old run mixes in, and deleted when the
new run succeeds. A new run that fails before writing an output of its own puts them back, so a bad recipe
run with ``overwrite`` loses nothing. While a run writes, the folder holds
``.run.lock`` with the process id; a second run into it stops with a message naming that process (a lock
left by a process that no longer exists is taken over).
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path

from rlhf_lightning.distributed.checkpoints import remove_path
from rlhf_lightning.errors import RecipeError

OUTPUTS = ("summary.json", "policy", "eval_history.json", "eval_curves.png", "reward_vs_kl.png", "samples.jsonl",
           "checkpoints", "evaluation")
LOCK = ".run.lock"
REPLACED = ".replaced"
CONFIG = "config.yaml"  # written by LightningCLI at setup
FIELD = "trainer.default_root_dir"


def previous_outputs(root: Path) -> list[str]:
    return [name for name in OUTPUTS if (root / name).exists()]


def prepare_run_folder(root: Path, resuming: bool, overwrite: bool, no_last_checkpoint: bool = False) -> None:
    """Refuse (or, with ``overwrite``, clear) another run's outputs in ``root``; a resume continues in place.
    ``no_last_checkpoint``: ``--ckpt_path last`` was given but found nothing to resume (a new run)."""
    found = previous_outputs(root)
    if not found or resuming:
        return
    if not overwrite:
        why = " (--ckpt_path last found no last checkpoint to resume)" if no_last_checkpoint else ""
        raise RecipeError(FIELD, f"'{root}' holds another run's outputs ({', '.join(found)}), which this run would "
                                 f"replace{why}",
                          "set another trainer.default_root_dir, resume that run with --ckpt_path last, or set "
                          "overwrite: true (--overwrite true) to remove them first")
    remove_path(root / REPLACED)  # a run replaced before the last one (that one wrote outputs, then failed)
    (root / REPLACED).mkdir()
    for name in found + [CONFIG] * (root / CONFIG).exists():  # its recipe goes with its outputs
        os.replace(root / name, root / REPLACED / name)


def finish_run_folder(root: Path, succeeded: bool) -> None:
    """After a run that replaced another (``overwrite``): delete the old outputs when it succeeded; put them
    back when it failed without writing outputs of its own (otherwise they stay in ``.replaced/``)."""
    replaced = root / REPLACED
    if not replaced.is_dir():
        return
    if succeeded:
        remove_path(replaced)
    elif not previous_outputs(root):
        for entry in replaced.iterdir():
            os.replace(entry, root / entry.name)
        replaced.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(root: Path) -> Path:
    """Create ``root/.run.lock`` for this process (released at exit); a live holder is an error."""
    root.mkdir(parents=True, exist_ok=True)
    lock = root / LOCK
    for _ in range(2):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder and holder != os.getpid() and _alive(holder):
                raise RecipeError(FIELD, f"another run (process {holder}) is writing into '{root}'",
                                  "wait for it to end, or set another trainer.default_root_dir") from None
            lock.unlink(missing_ok=True)  # left by a process that has ended
            continue
        with os.fdopen(handle, "w") as file:
            file.write(str(os.getpid()))
        atexit.register(release_lock, lock)
        return lock
    raise RecipeError(FIELD, f"cannot take the lock '{lock}'", "remove it if no run is using the folder")


def release_lock(lock: Path) -> None:
    try:
        if lock.read_text().strip() == str(os.getpid()):
            lock.unlink()
    except (OSError, ValueError):
        pass
