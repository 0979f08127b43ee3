"""``PromptDataModule``: batches of left-padded prompts for online (rollout) training."""

from __future__ import annotations

import warnings
from typing import Iterator, Literal, Optional

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler

from rlhf_lightning.data.files import read_records, require_columns
from rlhf_lightning.errors import RecipeError
from rlhf_lightning.models import load_tokenizer


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


class _Records(Dataset):
    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]


class PromptDataModule(LightningDataModule):
    """Prompts (and optional reference responses) from local files.

    Args:
        train_file: training prompts (.jsonl/.json/.parquet or a ``save_to_disk`` directory).
        tokenizer: tokenizer directory (usually the policy's).
        validation_file: held-out prompts for periodic evaluation.
        test_file: held-out prompts for the final evaluation (win rates).
        prompt_column: column with the prompt text.
        reference_column: column with a reference response (for win rate vs reference); optional.
        batch_size: prompts per rollout batch (per process).
        max_prompt_length: prompts longer than this many tokens are an error or skipped.
        on_long_prompt: ``error`` (default) or ``skip`` (counted and reported).
        shuffle: shuffle training prompts each epoch (seeded by ``seed``).
        seed: shuffling seed.
    """

    def __init__(self, train_file: str, tokenizer: str, validation_file: Optional[str] = None,
                 test_file: Optional[str] = None, prompt_column: str = "prompt",
                 reference_column: Optional[str] = "reference", batch_size: int = 32,
                 max_prompt_length: int = 512, on_long_prompt: Literal["error", "skip"] = "error",
                 shuffle: bool = True, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise RecipeError("data.init_args.batch_size", f"must be ≥ 1, got {batch_size}")
        self.train_file, self.validation_file, self.test_file = train_file, validation_file, test_file
        self.tokenizer_path = tokenizer
        self.prompt_column, self.reference_column = prompt_column, reference_column
        self.batch_size = batch_size
        self.max_prompt_length = max_prompt_length
        self.on_long_prompt = on_long_prompt
        self.shuffle, self.seed = shuffle, seed
        self.tokenizer = None
        self.splits: dict[str, list[dict]] = {}
        self._train_loader: Optional[DataLoader] = None
        self._resume_state: Optional[dict] = None

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        self.tokenizer = load_tokenizer(self.tokenizer_path, "data.init_args.tokenizer")
        files = {"train": self.train_file, "validation": self.validation_file, "test": self.test_file}
        for split, path in files.items():
            if path is not None:
                self.splits[split] = self._load_split(split, path)

    def _load_split(self, split: str, path: str) -> list[dict]:
        field = f"data.init_args.{split}_file"
        records = read_records(path, field)
        needed = [self.prompt_column] + ([self.reference_column] if self.reference_column and split != "train" else [])
        require_columns(records, needed, field, path)
        rows, too_long = [], 0
        for record in records:
            ids = self.tokenizer(record[self.prompt_column], add_special_tokens=True)["input_ids"]
            if len(ids) > self.max_prompt_length:
                too_long += 1
                continue
            row = {"prompt": record[self.prompt_column], "input_ids": ids}
            if self.reference_column and self.reference_column in record:
                row["reference"] = record[self.reference_column]
            rows.append(row)
        if too_long and self.on_long_prompt == "error":
            raise RecipeError("data.init_args.max_prompt_length",
                              f"{too_long} of {len(records)} prompts in '{path}' are longer than "
                              f"{self.max_prompt_length} tokens",
                              "raise max_prompt_length (within the model's context) or set on_long_prompt: skip")
        if too_long:
            warnings.warn(f"{split}: skipped {too_long} of {len(records)} prompts longer than "
                          f"{self.max_prompt_length} tokens", stacklevel=2)
        if not rows:
            raise RecipeError(field, f"no usable prompts in '{path}'", "check max_prompt_length and the data")
        return rows

    def collate(self, rows: list[dict]) -> dict:
        """Left-pad prompts: ``input_ids``/``attention_mask`` ``[B, P]``, plus the texts."""
        width = max(len(r["input_ids"]) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids = torch.tensor(row["input_ids"], dtype=torch.long)
            input_ids[i, width - len(ids):] = ids
            attention_mask[i, width - len(ids):] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "prompt": [r["prompt"] for r in rows]}
        if all("reference" in r for r in rows):
            batch["reference"] = [r["reference"] for r in rows]
        return batch

    def train_dataloader(self) -> DataLoader:
        rows = self.splits["train"]
        if self._train_loader is None:
            rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
            sampler = ResumableShuffleSampler(len(rows), self.seed, self.shuffle, rank, world)
            # a private generator: creating the iterator must not draw from the global RNG, or a resumed
            # run would sample different responses than the uninterrupted one
            self._train_loader = DataLoader(_Records(rows), batch_size=self.batch_size, sampler=sampler,
                                            collate_fn=self.collate, drop_last=True,
                                            generator=torch.Generator().manual_seed(self.seed))
        if self._resume_state is not None:
            state, self._resume_state = self._resume_state, None
            self._train_loader.sampler.resume_at(state["epoch"], state["batches"] * self.batch_size)
        return self._train_loader

    def state_dict(self) -> dict:
        """Where training is in the prompt stream (saved in checkpoints): epoch and batches trained on."""
        if self.trainer is None:
            return {}
        loop = self.trainer.fit_loop
        return {"epoch": self.trainer.current_epoch,
                "batches": loop.epoch_loop.batch_progress.current.processed}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._resume_state = dict(state)
            if self._train_loader is not None:
                self._train_loader.sampler.resume_at(state["epoch"], state["batches"] * self.batch_size)
                self._resume_state = None

    def eval_rows(self, split: str, limit: Optional[int] = None) -> list[dict]:
        """Rows of a held-out split for evaluation callbacks (``prompt``, ``input_ids``, ``reference``)."""
        if split not in self.splits:
            raise RecipeError(f"data.init_args.{split}_file", f"evaluation needs the '{split}' split, which is not set",
                              f"set data.init_args.{split}_file")
        rows = self.splits[split]
        return rows[:limit] if limit else rows
