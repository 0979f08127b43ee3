"""Pieces every data module shares: a resumable, seeded training loader and bad-row accounting."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from rlhf_lightning.errors import RecipeError

OnBadRow = Literal["skip", "error"]


def data_tokenizer(datamodule, path: Optional[str]):
    """A data module's tokenizer: ``path``, or the policy's (``model.init_args.policy.tokenizer``, else its
    ``path``) when ``path`` is not set, so that a recipe names the tokenizer once."""
    from rlhf_lightning.models import load_tokenizer

    if path is not None:
        return load_tokenizer(path, "data.init_args.tokenizer")
    trainer = getattr(datamodule, "trainer", None)
    policy = getattr(getattr(trainer, "lightning_module", None), "policy_config", None)
    if policy is None:
        raise RecipeError("data.init_args.tokenizer", "is not set, and there is no policy to take the tokenizer from",
                          "set data.init_args.tokenizer to the tokenizer's directory or hub id")
    return load_tokenizer(policy.tokenizer or policy.path, "model.init_args.policy.path", policy.trust_remote_code,
                          revision=policy.revision if policy.tokenizer is None else None)


def run_seed(seed: Optional[int]) -> int:
    """``seed``, or the run's ``seed_everything`` (Lightning exports it as ``PL_GLOBAL_SEED``) when None,
    so that ``--seed_everything N`` also changes the data order."""
    if seed is not None:
        return seed
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class Records(Dataset):
    """A list of already-encoded rows."""

    def __init__(self, rows: list) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        return self.rows[index]


class ResumableShuffleSampler(Sampler[int]):
    """A seeded per-epoch permutation that can start part-way, so a run resumes mid-epoch exactly.

    Lightning calls :meth:`set_epoch` at the start of every epoch. :meth:`resume_at` makes the next
    pass over ``epoch`` skip the indices already trained on. Under several processes each rank
    takes every ``world_size``-th index of the same permutation (the tail that does not divide
    evenly is dropped), so ranks see disjoint prompts.
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._resume: Optional[tuple[int, int]] = None  # (epoch, indices to skip)

    def __len__(self) -> int:
        return self.size // self.world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, skip: int) -> None:
        """Start the next pass over ``epoch`` after its first ``skip`` indices (of this rank)."""
        self.epoch = epoch
        self._resume = (epoch, skip)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        order = order[self.rank:len(self) * self.world_size:self.world_size]
        skip = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            skip = self._resume[1]
            self._resume = None
        return iter(order[skip:])


def check_one_batch(rows: int, batch_size: int, world_size: int = 1, source: Optional[str] = None) -> None:
    """Training drops an incomplete last batch: fewer rows (per process) than ``batch_size`` would train on
    nothing, which is an error rather than a run that ends at once."""
    per_process = rows // world_size
    if per_process >= batch_size:
        return
    where = f" of '{source}'" if source else ""
    processes = f" ({per_process} for each of {world_size} processes)" if world_size > 1 else ""
    fix = (f"set data.init_args.batch_size to {per_process} or less, or add rows" if per_process
           else f"add rows: each of the {world_size} processes needs at least batch_size of them")
    raise RecipeError("data.init_args.batch_size", f"the training data{where} has {rows} usable rows{processes}, "
                      f"fewer than batch_size={batch_size}, so not one batch would be trained on", fix)


class ResumableTrainLoader:
    """Mixin for a ``LightningDataModule``: a seeded training loader whose position (epoch and batches
    trained on) is saved in checkpoints, so that ``--ckpt_path`` resumes mid-epoch on the same rows.

    The host sets ``self.batch_size``, ``self.shuffle`` and ``self.seed``, and calls
    :meth:`resumable_loader` from ``train_dataloader``.
    """

    batch_size: int
    shuffle: bool
    seed: int
    _train_loader: Optional[DataLoader] = None
    _resume_state: Optional[dict] = None

    def resumable_loader(self, rows: list, collate: Callable, source: Optional[str] = None) -> DataLoader:
        """The training loader over ``rows`` (read from ``source``, named in errors)."""
        if self._train_loader is None:
            trainer = getattr(self, "trainer", None)
            rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
            check_one_batch(len(rows), self.batch_size, world, source)
            sampler = ResumableShuffleSampler(len(rows), self.seed, self.shuffle, rank, world)
            # a private generator: creating the iterator must not draw from the global RNG, or a resumed
            # run would sample differently from the uninterrupted one
            self._train_loader = DataLoader(Records(rows), batch_size=self.batch_size, sampler=sampler,
                                            collate_fn=collate, drop_last=True,
                                            generator=torch.Generator().manual_seed(self.seed))
        if self._resume_state is not None:
            state, self._resume_state = self._resume_state, None
            self._train_loader.sampler.resume_at(state["epoch"], state["batches"] * self.batch_size)
        return self._train_loader

    def train_position(self) -> dict:
        """Epoch and batches trained on (for ``state_dict``)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        return {"epoch": trainer.current_epoch,
                "batches": trainer.fit_loop.epoch_loop.batch_progress.current.processed}

    def resume_train_position(self, state: dict) -> None:
        """Apply a saved position (for ``load_state_dict``)."""
        if "epoch" not in state:
            return
        self._resume_state = dict(state)
        if self._train_loader is not None:
            self._train_loader.sampler.resume_at(state["epoch"], state["batches"] * self.batch_size)
            self._resume_state = None


@dataclass(frozen=True)
class Unusable:
    """Why a row cannot be used: ``reason`` is shared by the rows it counts (e.g. "empty responses"),
    ``detail`` says what this row holds, ``fix`` what to do about such rows."""

    reason: str
    detail: str = ""
    fix: str = ""


DEFAULT_FIX = "fix the data or raise the length limits"


class BadRows:
    """Counts rows rejected while encoding a split, by reason, and reports them once."""

    def __init__(self, split: str, path: str, policy: OnBadRow, field: str) -> None:
        self.split, self.path, self.policy, self.field = split, path, policy, field
        self.counts: Counter[str] = Counter()
        self.first: dict[str, tuple[int, Unusable]] = {}

    def add(self, reason: str | Unusable, index: int) -> None:
        bad = reason if isinstance(reason, Unusable) else Unusable(reason)
        self.counts[bad.reason] += 1
        self.first.setdefault(bad.reason, (index, bad))

    def details(self) -> str:
        """``"2 empty responses (first: row 3); ..."``, with what the first row of a reason holds."""
        parts = []
        for reason, count in self.counts.items():
            index, bad = self.first[reason]
            parts.append(f"{count} {reason} (first: row {index}{': ' + bad.detail if bad.detail else ''})")
        return "; ".join(parts)

    def fix(self) -> str:
        """The fix of the most frequent reason."""
        reason = self.counts.most_common(1)[0][0]
        return self.first[reason][1].fix or DEFAULT_FIX

    def report(self, total: int, kept: Optional[int] = None) -> None:
        """Raise when no row is left (``kept`` 0) or with ``on_bad_row: error``, else warn with the counts;
        silent when every row was good."""
        if not self.counts:
            return
        if kept == 0:
            raise RecipeError(self.field, f"no usable rows in '{self.path}': {self.details()}", self.fix())
        if self.policy == "error":
            raise RecipeError(self.field, f"{sum(self.counts.values())} of {total} rows in '{self.path}' are unusable: "
                                          f"{self.details()}", f"{self.fix()}, or set on_bad_row: skip")
        warnings.warn(f"{self.split}: skipped {sum(self.counts.values())} of {total} rows of '{self.path}': "
                      f"{self.details()}", stacklevel=3)
