"""``PromptDataModule``: batches of left-padded prompts for online (rollout) training."""

from __future__ import annotations

import warnings
from typing import Literal, Optional

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from rlhf_lightning.data.base import ResumableTrainLoader, data_tokenizer, run_seed
from rlhf_lightning.data.encoding import (collate_prompt_rows, encode_prompt, is_empty_prompt, other_columns, pad_rows,
                                          prompt_problem)
from rlhf_lightning.data.files import lacking_value, read_records, require_columns
from rlhf_lightning.errors import RecipeError
from rlhf_lightning.rewards import RESERVED_COLUMNS


def partial_columns(records: list[dict], prompt_column: str) -> dict[str, tuple[int, int]]:
    """Columns (besides the prompt) that some rows have and others lack or leave null: how many rows lack
    each, and the first of them (by row of the file)."""
    names = list(dict.fromkeys(name for record in records for name in record if name != prompt_column))
    partial = {}
    for name in names:
        lacking = [index for index, record in enumerate(records) if lacking_value(record, name)]
        if lacking:
            partial[name] = (len(lacking), lacking[0])
    return partial


class PretrainStream:
    """A seeded, endless stream of row indices for the pretraining mix, independent of the prompt order.

    Draw ``k`` of rank ``r`` takes ``batch_size`` consecutive entries, starting at
    ``(k·world_size + r)·batch_size``, of the concatenation of seeded permutations of the rows (one new
    permutation per pass), so ranks draw disjoint rows and a run resumes exactly from the draw count.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.draws = 0
        self._permutation: tuple[int, list[int]] = (-1, [])

    def _order(self, cycle: int) -> list[int]:
        if self._permutation[0] != cycle:
            # seeded apart from the prompt sampler (seed + epoch), so that the two orders are independent
            key = np.random.SeedSequence([self.seed % 2**63, cycle, 0x5EED]).generate_state(1, np.uint64)[0]
            generator = torch.Generator().manual_seed(int(key) % 2**63)
            self._permutation = (cycle, torch.randperm(self.size, generator=generator).tolist())
        return self._permutation[1]

    def next(self) -> list[int]:
        """Row indices of the next draw (advances the stream)."""
        start = (self.draws * self.world_size + self.rank) * self.batch_size
        self.draws += 1
        return [self._order(position // self.size)[position % self.size]
                for position in range(start, start + self.batch_size)]


class PromptDataModule(ResumableTrainLoader, LightningDataModule):
    """Prompts (and optional reference responses) from local files.

    Prompts are text or chat messages (a list of ``{"role", "content"}``, rendered by the tokenizer's chat
    template with the assistant's generation prompt). Every other column of a row reaches the reward
    sources by name (``batch["columns"]``), e.g. an ``answer`` column for a verifiable reward.

    Args:
        train_file: training prompts (.jsonl/.json/.csv/.tsv/.parquet or a ``save_to_disk`` directory).
        tokenizer: tokenizer directory or hub id (default: the policy's, ``model.init_args.policy``).
        validation_file: held-out prompts for periodic evaluation.
        test_file: held-out prompts for the final evaluation (win rates).
        prompt_column: column with the prompt (text, or a list of chat messages).
        reference_column: column with a reference response (for win rate vs reference); optional.
        batch_size: prompts per rollout batch (per process).
        max_prompt_length: prompts longer than this many tokens are an error or skipped.
        on_long_prompt: ``error`` (default) or ``skip`` (counted and reported).
        shuffle: shuffle training prompts each epoch (seeded by ``seed``).
        seed: shuffling seed (default: the run's ``seed_everything``).
        pretrain_file: pretraining / SFT text for the pretraining mix of PPO-ptx (InstructGPT): when set,
            every training batch also carries ``batch["pretrain"]`` (``input_ids``, ``attention_mask``,
            right-padded), drawn from a seeded stream independent of the prompt order (resumable);
            used when the objective's ``ptx_coef`` > 0.
        pretrain_column: column of ``pretrain_file`` with the text.
        pretrain_max_length: pretraining texts are cut to this many tokens (EOS appended first).
        pretrain_batch_size: texts per training batch (default: ``batch_size``).
    """

    def __init__(self, train_file: str, tokenizer: Optional[str] = None, validation_file: Optional[str] = None,
                 test_file: Optional[str] = None, prompt_column: str = "prompt",
                 reference_column: Optional[str] = "reference", batch_size: int = 32,
                 max_prompt_length: int = 512, on_long_prompt: Literal["error", "skip"] = "error",
                 shuffle: bool = True, seed: Optional[int] = None, pretrain_file: Optional[str] = None,
                 pretrain_column: str = "text", pretrain_max_length: int = 512,
                 pretrain_batch_size: Optional[int] = None) -> None:
        super().__init__()
        if batch_size < 1:
            raise RecipeError("data.init_args.batch_size", f"must be ≥ 1, got {batch_size}")
        if pretrain_max_length < 2:
            raise RecipeError("data.init_args.pretrain_max_length", f"must be ≥ 2, got {pretrain_max_length}")
        if pretrain_batch_size is not None and pretrain_batch_size < 1:
            raise RecipeError("data.init_args.pretrain_batch_size", f"must be ≥ 1 or null, got {pretrain_batch_size}")
        self.pretrain_file, self.pretrain_column = pretrain_file, pretrain_column
        self.pretrain_max_length = pretrain_max_length
        self.pretrain_batch_size = pretrain_batch_size or batch_size
        self.pretrain_rows: list[list[int]] = []
        self._pretrain_stream: Optional[PretrainStream] = None
        self._pretrain_resume_draws = 0
        self.train_file, self.validation_file, self.test_file = train_file, validation_file, test_file
        self.tokenizer_path = tokenizer
        self.prompt_column, self.reference_column = prompt_column, reference_column
        self.batch_size = batch_size
        self.max_prompt_length = max_prompt_length
        self.on_long_prompt = on_long_prompt
        self.shuffle, self.seed = shuffle, run_seed(seed)
        self.tokenizer = None
        self.splits: dict[str, list[dict]] = {}
        self.partial_columns: dict[str, tuple[int, int]] = {}  # column → (rows that lack it, the first of them)
        self._train_records = 0  # rows of train_file (before prompts too long are skipped)
        self._train_loader: Optional[DataLoader] = None
        self._resume_state: Optional[dict] = None

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        self.tokenizer = data_tokenizer(self, self.tokenizer_path)
        files = {"train": self.train_file, "validation": self.validation_file, "test": self.test_file}
        for split, path in files.items():
            if path is not None:
                self.splits[split] = self._load_split(split, path)
        if self.pretrain_file is not None:
            self.pretrain_rows = self._load_pretrain(self.pretrain_file)
        self.check_reward_columns()

    def _load_pretrain(self, path: str) -> list[list[int]]:
        field = "data.init_args.pretrain_file"
        records = read_records(path, field)
        require_columns(records, [self.pretrain_column], field, path,
                        options={self.pretrain_column: "data.init_args.pretrain_column"})
        eos = [self.tokenizer.eos_token_id]
        rows = [(self.tokenizer(record[self.pretrain_column], add_special_tokens=True)["input_ids"] + eos)
                [:self.pretrain_max_length] for record in records]
        rows = [ids for ids in rows if len(ids) >= 2]  # one token predicts nothing
        if not rows:
            raise RecipeError(field, f"no text of two or more tokens in '{path}'", "check pretrain_column and the data")
        return rows

    def _load_split(self, split: str, path: str) -> list[dict]:
        field = f"data.init_args.{split}_file"
        records = read_records(path, field, split)
        needed = [self.prompt_column] + ([self.reference_column] if self.reference_column and split != "train" else [])
        require_columns(records, needed, field, path, options={self.prompt_column: "data.init_args.prompt_column",
                                                               self.reference_column: "data.init_args.reference_column"})
        reserved = [name for name in RESERVED_COLUMNS if name in records[0]]
        if reserved:
            raise RecipeError(field, f"'{path}' has a column named {reserved[0]!r}, which reward functions receive as "
                                     "their own argument", f"rename the column {reserved[0]!r} in the data")
        problems = [(index, prompt_problem(record[self.prompt_column])) for index, record in enumerate(records)]
        problems = [(index, problem) for index, problem in problems if problem is not None]
        if problems:
            index, problem = problems[0]
            messages = isinstance(records[index][self.prompt_column], (list, dict)) and "message" in problem
            raise RecipeError("data.init_args.prompt_column", f"{len(problems)} of {len(records)} prompts in '{path}' "
                              f"are neither text nor chat messages (row {index}: {problem})",
                              "write chat messages as {'role': 'user' | 'assistant' | 'system', 'content': '...'}"
                              if messages else
                              f"store the prompts of column '{self.prompt_column}' as text, or name the text column")
        empty = [index for index, record in enumerate(records) if is_empty_prompt(record[self.prompt_column])]
        if empty:  # the policy would be trained to answer nothing
            raise RecipeError(field, f"{len(empty)} of {len(records)} prompts in '{path}' are empty (the first is row "
                                     f"{empty[0]})", "remove those rows or fill their prompts")
        rows, too_long, first_long = [], 0, None
        for index, record in enumerate(records):
            try:
                ids = encode_prompt(self.tokenizer, record[self.prompt_column])
            except ValueError as error:
                fix = ("fix the conversation in that row (the template's rule is in the message)"
                       if getattr(self.tokenizer, "chat_template", None) else
                       "use a tokenizer with a chat template, or plain-text prompts")
                raise RecipeError("data.init_args.prompt_column", f"row {index} of '{path}': {error}", fix) from None
            if len(ids) > self.max_prompt_length:
                too_long += 1
                first_long = first_long or (index, len(ids))
                continue
            row = {"prompt": record[self.prompt_column], "input_ids": ids,
                   "columns": other_columns(record, self.prompt_column)}
            if self.reference_column and self.reference_column in record:
                row["reference"] = record[self.reference_column]
            rows.append(row)
        if too_long and self.on_long_prompt == "error":
            raise RecipeError("data.init_args.max_prompt_length",
                              f"{too_long} of {len(records)} prompts in '{path}' are longer than "
                              f"{self.max_prompt_length} tokens (the first is row {first_long[0]}, "
                              f"{first_long[1]} tokens)",
                              "raise max_prompt_length (within the model's context) or set on_long_prompt: skip")
        if too_long:
            warnings.warn(f"{split}: skipped {too_long} of {len(records)} prompts longer than "
                          f"{self.max_prompt_length} tokens", stacklevel=2)
        if not rows:
            raise RecipeError(field, f"no usable prompts in '{path}'", "check max_prompt_length and the data")
        if split == "train":
            self.partial_columns = partial_columns(records, self.prompt_column)
            self._train_records = len(records)
        return rows

    def collate(self, rows: list[dict]) -> dict:
        """Left-padded prompts ``input_ids``/``attention_mask`` ``[B, P]``, the prompts, the other columns."""
        return collate_prompt_rows(rows, self.tokenizer.pad_token_id)

    def collate_pretrain(self, rows: list[list[int]]) -> dict:
        """Right-pad token lists: ``input_ids``/``attention_mask`` ``[B, L]``."""
        input_ids, attention_mask = pad_rows(rows, self.tokenizer.pad_token_id, "right")
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    @property
    def prompt_columns(self) -> list[str]:
        """Names of the training prompts' other columns that every row fills (what a reward function may ask
        for)."""
        rows = self.splits.get("train", [])
        return [name for name in rows[0]["columns"] if name not in self.partial_columns] if rows else []

    def check_reward_columns(self) -> None:
        """A reward of the run that asks for a column some training rows lack (or leave null) is an error naming
        those rows: those rows would give it ``None``."""
        module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        reward = getattr(module, "reward", None)
        if reward is None or not self.partial_columns or not hasattr(reward, "missing_columns"):
            return
        asked = [name for name in reward.missing_columns(self.prompt_columns) if name in self.partial_columns]
        if asked:
            lacking, first = self.partial_columns[asked[0]]
            raise RecipeError("data.init_args.train_file", f"the reward asks for the data column '{asked[0]}', which "
                              f"{lacking} of {self._train_records} rows of '{self.train_file}' lack or leave null "
                              f"(the first is row {first})", f"fill '{asked[0]}' in every row, or drop those rows")

    def pretrain_stream(self) -> Optional[PretrainStream]:
        """The stream of pretraining rows (``None`` without ``pretrain_file``)."""
        if self.pretrain_file is None:
            return None
        if self._pretrain_stream is None:
            rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
            self._pretrain_stream = PretrainStream(len(self.pretrain_rows), self.pretrain_batch_size, self.seed,
                                                   rank, world)
            self._pretrain_stream.draws = self._pretrain_resume_draws
        return self._pretrain_stream

    def next_pretrain_batch(self) -> dict:
        """The next pretraining batch of the stream (right-padded ``input_ids``/``attention_mask``)."""
        return self.collate_pretrain([self.pretrain_rows[i] for i in self.pretrain_stream().next()])

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        # attached here, not in the collate, so that only batches the loop trains on draw from the stream
        # (Lightning's fetcher reads one batch ahead) and the draw count in checkpoints is exact
        if (self.pretrain_file is not None and self.trainer is not None and self.trainer.training
                and isinstance(batch, dict)):
            batch["pretrain"] = self.next_pretrain_batch()
        return batch

    def train_dataloader(self) -> DataLoader:
        return self.resumable_loader(self.splits["train"], self.collate, self.train_file)

    def state_dict(self) -> dict:
        """Where training is in the prompt stream (saved in checkpoints): epoch and batches trained on."""
        state = self.train_position()
        if self.pretrain_file is not None:
            state["pretrain_draws"] = (self._pretrain_stream.draws if self._pretrain_stream is not None
                                       else self._pretrain_resume_draws)
        return state

    def load_state_dict(self, state: dict) -> None:
        if "pretrain_draws" in state:  # where the pretraining stream was (applied when the stream starts)
            self._pretrain_resume_draws = state["pretrain_draws"]
            if self._pretrain_stream is not None:
                self._pretrain_stream.draws = state["pretrain_draws"]
        self.resume_train_position(state)

    def eval_rows(self, split: str, limit: Optional[int] = None) -> list[dict]:
        """Rows of a held-out split for evaluation callbacks (``prompt``, ``input_ids``, ``columns``, ``reference``)."""
        if split not in self.splits:
            raise RecipeError(f"data.init_args.{split}_file", f"evaluation needs the '{split}' split, which is not set",
                              f"set data.init_args.{split}_file")
        rows = self.splits[split]
        return rows[:limit] if limit else rows
