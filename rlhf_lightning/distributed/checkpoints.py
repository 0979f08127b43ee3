"""Checkpoint folders written by several processes, put in place only once every process has finished."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable


def remove_path(path: Path) -> None:
    """Remove a file, link or folder if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace_path(source: Path, target: Path) -> None:
    """Move ``source`` (a file or folder) to ``target``; what was at ``target`` is removed only after the
    new one is in place."""
    old = target.with_name(target.name + ".old")
    remove_path(old)
    if target.exists() or target.is_symlink():
        target.rename(old)
    source.rename(target)
    remove_path(old)


def save_through_partial(strategy, filepath, write: Callable[[Path], None]) -> None:
    """Every rank runs ``write(<name>.partial)``; rank 0 then renames the folder to ``filepath``.

    A crash during the write leaves the previous checkpoint under its name (and a ``.partial`` folder that
    the next save removes), never a half-written one.
    """
    path = Path(strategy.broadcast(str(filepath)))
    partial = path.with_name(path.name + ".partial")
    if strategy.is_global_zero:
        remove_path(partial)
    strategy.barrier("checkpoint_partial_clean")
    write(partial)
    strategy.barrier("checkpoint_written")
    if strategy.is_global_zero:
        replace_path(partial, path)
    strategy.barrier("checkpoint_renamed")
