"""Data modules of the offline objectives: SFT rows, preference pairs and unpaired (KTO) labels.

Each reads local JSON / JSONL / CSV / TSV / Parquet files or a ``datasets`` directory written by
``save_to_disk``, with configurable column names; prompts may be plain text or chat messages
(the tokenizer's chat template is applied). Rows that cannot be used (no value, a value that is
neither text nor chat messages, empty response, a response list that does not end with the
assistant's message or holds messages before it that are not the row's prompt, prompt or response
over its length limit, identical chosen and rejected, a label or margin that is not one) are
counted and reported with what the first such row holds, then skipped or rejected per
``on_bad_row``; when no row is left, the error says why; rows of ``eval_prompt_file`` whose prompt
is unusable are counted the same way. A missing column is always an error. KTO labels are
true/false, 1/0, or the text (any case) true/false, 1/0, yes/no, desirable/undesirable,
good/bad. Batches are
:class:`~rlhf_lightning.batches.SequenceBatch` objects: a left-padded prompt block followed by a
right-padded response block (EOS appended), so the loss never sees prompt tokens.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Optional

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from rlhf_lightning.batches import SequenceBatch
from rlhf_lightning.data.base import (BadRows, OnBadRow, Records, ResumableTrainLoader, Unusable, data_tokenizer,
                                      run_seed)
from rlhf_lightning.data.encoding import (collate_prompt_rows, describe, encode_prompt, encode_response,
                                          is_empty_prompt, message_problem, other_columns, pad_prompt_response,
                                          pad_rows, prompt_problem, response_problem, response_text)
from rlhf_lightning.data.files import lacking_value, read_records, require_columns
from rlhf_lightning.errors import RecipeError

MESSAGES_FIX = "write chat messages as {'role': 'user' | 'assistant' | 'system', 'content': '...'}"
TEMPLATE_FIX = "fix those conversations (the template's rule is in the message), or drop those rows"


class OfflineDataModule(ResumableTrainLoader, LightningDataModule):
    """Shared loading, encoding, bad-row accounting and loaders; subclasses define one row kind.

    Args:
        train_file: training data (.jsonl/.json/.csv/.tsv/.parquet or a ``save_to_disk`` directory).
        tokenizer: tokenizer directory or hub id (default: the policy's, ``model.init_args.policy``).
        validation_file: held-out rows of the same kind (validation loss and metrics, e.g. RM accuracy).
        eval_prompt_file: held-out prompts (with ``reference_column``) for ``WinRateEvaluation``.
        prompt_column: column with the prompt (text, or a list of chat messages).
        reference_column: column of ``eval_prompt_file`` with a reference response.
        batch_size: rows (SFT, KTO) or pairs (preferences) per batch, per process.
        max_prompt_length: prompts longer than this many tokens are bad rows.
        max_response_length: responses longer than this many tokens (EOS included) are bad rows.
        on_bad_row: ``skip`` (count, warn, drop) or ``error``.
        shuffle: shuffle training rows each epoch (seeded).
        seed: shuffling seed (default: the run's ``seed_everything``).
    """

    response_columns: tuple[str, ...] = ()

    def __init__(self, train_file: str, tokenizer: Optional[str] = None, validation_file: Optional[str] = None,
                 eval_prompt_file: Optional[str] = None, prompt_column: str = "prompt",
                 reference_column: str = "reference", batch_size: int = 16, max_prompt_length: int = 512,
                 max_response_length: int = 512, on_bad_row: OnBadRow = "skip", shuffle: bool = True,
                 seed: Optional[int] = None) -> None:
        super().__init__()
        errors = []
        for key, value in (("batch_size", batch_size), ("max_prompt_length", max_prompt_length),
                           ("max_response_length", max_response_length)):
            if value < 1:
                errors.append(RecipeError(f"data.init_args.{key}", f"must be ≥ 1, got {value}"))
        if errors:
            from rlhf_lightning.errors import raise_all

            raise_all(errors)
        self.train_file, self.validation_file, self.eval_prompt_file = train_file, validation_file, eval_prompt_file
        self.tokenizer_path = tokenizer
        self.prompt_column, self.reference_column = prompt_column, reference_column
        self.batch_size = batch_size
        self.max_prompt_length, self.max_response_length = max_prompt_length, max_response_length
        self.on_bad_row = on_bad_row
        self.shuffle, self.seed = shuffle, run_seed(seed)
        self.tokenizer = None
        self.splits: dict[str, list] = {}
        self.eval_prompts: list[dict] = []
        self._train_loader = None
        self._resume_state = None

    # ------------------------------------------------------------------ encoding (subclasses)
    def columns(self) -> list[str]:
        """Columns every row must have."""
        raise NotImplementedError

    def encode(self, record: dict, index: int) -> dict | str | Unusable:
        """The encoded row, or why the row is unusable (a reason, or an :class:`Unusable`)."""
        raise NotImplementedError

    def collate(self, rows: list[dict]) -> SequenceBatch:
        raise NotImplementedError

    # ------------------------------------------------------------------ shared helpers
    def _prompt(self, record: dict) -> list[int] | Unusable:
        prompt = record[self.prompt_column]
        problem = prompt_problem(prompt)
        if problem is not None:
            return Unusable("prompts that are neither text nor chat messages", problem, MESSAGES_FIX)
        if is_empty_prompt(prompt):
            return Unusable("empty prompts", fix="fill the prompts or drop those rows")
        if isinstance(prompt, list) and not getattr(self.tokenizer, "chat_template", None):
            raise RecipeError("data.init_args.prompt_column", "the prompt is a list of chat messages, but the "
                              "tokenizer has no chat template", "use a tokenizer with a chat template, or plain-text "
                                                                "prompts")
        try:
            ids = encode_prompt(self.tokenizer, prompt)
        except ValueError as error:  # the chat template refuses the conversation
            return Unusable("conversations the chat template refuses", str(error), TEMPLATE_FIX)
        if len(ids) > self.max_prompt_length:
            return Unusable(f"prompts longer than max_prompt_length={self.max_prompt_length}",
                            fix="raise max_prompt_length (within the model's context) or shorten those prompts")
        return ids

    def _response(self, value: Any, prompt: Any = None, column: str = "response") -> list[int] | Unusable:
        problem = response_problem(value)
        if problem is not None:
            return Unusable("responses that are neither text nor chat messages", problem,
                            "store each response as text, or as {'role': 'assistant', 'content': '...'}")
        unusable = response_messages_problem(value, prompt, column, self.prompt_column)
        if unusable is not None:
            return unusable
        if not response_text(value).strip():
            return Unusable("empty responses", fix="fill the responses or drop those rows")
        try:
            ids = encode_response(self.tokenizer, value, prompt)
        except ValueError as error:  # the chat template refuses the conversation
            return Unusable("conversations the chat template refuses", str(error), TEMPLATE_FIX)
        if len(ids) > self.max_response_length:
            return Unusable(f"responses longer than max_response_length={self.max_response_length}",
                            fix="raise max_response_length (within the model's context) or shorten those responses")
        return ids

    def _encode_parts(self, record: dict, *response_columns: str) -> list[list[int]] | Unusable:
        """``[prompt ids, response ids, ...]`` of a row, or the first reason it cannot be used."""
        for column in (self.prompt_column, *response_columns):
            if lacking_value(record, column):
                return Unusable(f"rows with no value for '{column}'", fix=f"fill '{column}' in those rows or drop them")
        prompt = record[self.prompt_column]
        parts = [self._prompt(record)] + [self._response(record[column], prompt, column) for column in response_columns]
        return next((part for part in parts if isinstance(part, Unusable)), parts)

    def _load_split(self, split: str, path: str) -> list[dict]:
        field = f"data.init_args.{split}_file"
        records = read_records(path, field, split)
        options = {self.prompt_column: "data.init_args.prompt_column"}
        options.update({getattr(self, f"{c}_column"): f"data.init_args.{c}_column" for c in self.response_columns})
        self._check_format(records, field, path)
        require_columns(records, self.columns(), field, path, options=options, values=False)
        bad = BadRows(split, path, self.on_bad_row, field)
        rows = []
        for index, record in enumerate(records):
            row = self.encode(record, index)
            if isinstance(row, (str, Unusable)):
                bad.add(row, index)
            else:
                rows.append(row)
        bad.report(len(records), kept=len(rows))
        return rows

    def _check_format(self, records: list, field: str, path: str) -> None:
        """A file in a format the module does not read, named before the generic missing-column error (none here)."""

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits:
            return
        self.tokenizer = data_tokenizer(self, self.tokenizer_path)
        self.splits["train"] = self._load_split("train", self.train_file)
        if self.validation_file:
            self.splits["validation"] = self._load_split("validation", self.validation_file)
        if self.eval_prompt_file:
            self.eval_prompts = self._load_eval_prompts(self.eval_prompt_file)

    def _load_eval_prompts(self, path: str) -> list[dict]:
        field = "data.init_args.eval_prompt_file"
        records = read_records(path, field, "test")
        require_columns(records, [self.prompt_column], field, path,
                        options={self.prompt_column: "data.init_args.prompt_column"})
        bad = BadRows("eval_prompt_file", path, self.on_bad_row, field)
        rows = []
        for index, record in enumerate(records):
            ids = self._prompt(record)
            if isinstance(ids, Unusable):
                bad.add(ids, index)
                continue
            row = {"prompt": record[self.prompt_column], "input_ids": ids,
                   "columns": other_columns(record, self.prompt_column)}
            if self.reference_column in record:
                row["reference"] = record[self.reference_column]
            rows.append(row)
        bad.report(len(records), kept=len(rows))
        return rows

    # ------------------------------------------------------------------ loaders and state
    def train_dataloader(self) -> DataLoader:
        return self.resumable_loader(self.splits["train"], self.collate, self.train_file)

    def val_dataloader(self) -> DataLoader:
        if "validation" not in self.splits:
            return []
        return DataLoader(Records(self.splits["validation"]), batch_size=self.batch_size, shuffle=False,
                          collate_fn=self.collate)

    def state_dict(self) -> dict:
        return self.train_position()

    def load_state_dict(self, state: dict) -> None:
        self.resume_train_position(state)

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        if isinstance(batch, SequenceBatch):
            return batch.to(device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    # ------------------------------------------------------------------ evaluation prompts
    def eval_rows(self, split: str, limit: Optional[int] = None) -> list[dict]:
        """Held-out prompts for ``WinRateEvaluation`` (any split name maps to ``eval_prompt_file``)."""
        if not self.eval_prompts:
            raise RecipeError("data.init_args.eval_prompt_file", "evaluation needs held-out prompts, none are set",
                              "set data.init_args.eval_prompt_file (rows with the prompt and a reference response)")
        return self.eval_prompts[:limit] if limit else self.eval_prompts

    @property
    def has_eval_split(self) -> bool:
        return bool(self.eval_prompts)

    def collate_prompts(self, rows: list[dict]) -> dict:
        """Left-padded prompts for generation (see :func:`~rlhf_lightning.data.encoding.collate_prompt_rows`)."""
        return collate_prompt_rows(rows, self.tokenizer.pad_token_id)


class SFTDataModule(OfflineDataModule):
    """Supervised fine-tuning rows: (prompt, response) columns, or one column of chat messages whose
    last message is the assistant's response. The loss sees response tokens only.

    With ``packing``, encoded examples (prompt tokens, response tokens, EOS) are concatenated greedily,
    in data order, into rows of at most ``max_length`` tokens (an example longer than that is a bad
    row), and ``batch_size`` counts packed rows. A packed batch has ``prompt_length`` 1 (the row's
    first token; everything after it is the response block) and ``extras["loss_mask"]`` ``[N, R]``,
    1 on the response tokens of every packed example and 0 on their prompt tokens and padding (the
    SFT objective uses it instead of the response mask). Position ids continue across the examples
    of a row and attention is *not* isolated between them: each example also attends to the ones
    packed before it. This is the usual approximate packing; it saves padding and compute for many
    short examples, but changes what the model conditions on, so use it for short examples only
    (and leave it off for long ones, where padding is a small share anyway).

    Args:
        response_column: column with the response (ignored with ``messages_column``).
        messages_column: column holding a list of chat messages (the tokenizer's chat template is used).
        packing: pack several examples per row (see above).
        max_length: tokens per packed row (with ``packing``).
        (the others as in :class:`OfflineDataModule`)
    """

    response_columns = ("response",)

    def __init__(self, train_file: str, tokenizer: Optional[str] = None, response_column: str = "response",
                 messages_column: Optional[str] = None, packing: bool = False, max_length: int = 512,
                 **kwargs: Any) -> None:
        super().__init__(train_file, tokenizer, **kwargs)
        if max_length < 1:
            raise RecipeError("data.init_args.max_length", f"must be ≥ 1, got {max_length}")
        self.response_column, self.messages_column = response_column, messages_column
        self.packing, self.max_length = packing, max_length

    def columns(self) -> list[str]:
        return [self.messages_column] if self.messages_column else [self.prompt_column, self.response_column]

    def encode(self, record: dict, index: int) -> dict | Unusable:
        if self.messages_column:
            messages = record.get(self.messages_column)
            problem = messages_problem(messages)
            if problem is not None:
                return problem
            record = {self.prompt_column: messages[:-1], self.response_column: messages[-1]}
        parts = self._encode_parts(record, self.response_column)
        if isinstance(parts, Unusable):
            return parts
        prompt, response = parts
        if self.packing and len(prompt) + len(response) > self.max_length:
            return Unusable(f"examples longer than max_length={self.max_length} (packing)",
                            f"{len(prompt) + len(response)} tokens", "raise max_length (within the model's context)")
        return {"prompt_ids": prompt, "response_ids": response, "index": index}

    def _load_split(self, split: str, path: str) -> list[dict]:
        rows = super()._load_split(split, path)
        return pack_examples(rows, self.max_length) if self.packing else rows

    def collate(self, rows: list[dict]) -> SequenceBatch:
        if self.packing:
            return collate_packed(rows, self.tokenizer.pad_token_id)
        input_ids, attention_mask, width = pad_prompt_response([r["prompt_ids"] for r in rows],
                                                               [r["response_ids"] for r in rows],
                                                               self.tokenizer.pad_token_id)
        return SequenceBatch(input_ids, attention_mask, width, group_size=1,
                             extras={"index": torch.tensor([r["index"] for r in rows])})


def messages_problem(messages: Any) -> Optional[Unusable]:
    """Why an SFT conversation cannot be trained on (None when it can): not a list of chat messages, or not
    ending with the assistant's message (the response)."""
    if messages is None:
        return Unusable("rows with no conversation", fix="fill the messages column in those rows or drop them")
    if not isinstance(messages, list) or not messages:
        return Unusable("conversations that are not lists of chat messages", f"{describe(messages)}", MESSAGES_FIX)
    problem = message_problem(messages)
    if problem is not None:
        return Unusable("conversations with malformed messages", problem, MESSAGES_FIX)
    if messages[-1].get("role") != "assistant":
        return Unusable("message lists that do not end with an assistant message",
                        f"the last role is {messages[-1].get('role')!r}",
                        "end each conversation with the assistant's message (the response to learn)")
    return None


def _message_key(message: dict) -> tuple:
    return message.get("role"), str(message.get("content") or "").strip()


def response_messages_problem(value: Any, prompt: Any, column: str, prompt_column: str) -> Optional[Unusable]:
    """Why a response given as chat messages cannot be trained on (None when it can, and for text).

    A response is the assistant's reply to the row's prompt (TRL's conversational format: the prompt holds the
    conversation, the response the assistant's message). So the last message must be the assistant's, and any
    messages before it must repeat the row's prompt exactly (a whole conversation whose head is the prompt, as
    some data sets store it: the prompt's messages, or one user message holding a text prompt); other messages
    before the reply would be dropped, so such a row is unusable rather than trained on without them.
    """
    messages = [value] if isinstance(value, dict) else value
    if not isinstance(messages, list) or not messages:
        return None
    last = messages[-1].get("role")
    if last != "assistant":
        return Unusable("responses whose last message is not the assistant's",
                        f"'{column}' ends with a {last!r} message",
                        f"end each '{column}' list with the assistant's reply (the response to learn), or store the "
                        "reply as text")
    earlier = messages[:-1]
    if not earlier:
        return None
    if isinstance(prompt, str):
        repeats = [_message_key(m) for m in earlier] == [("user", prompt.strip())]
    elif isinstance(prompt, list):
        repeats = [_message_key(m) for m in earlier] == [_message_key(m) for m in prompt if isinstance(m, dict)]
    else:
        repeats = False
    if repeats:
        return None
    roles = ", ".join(repr(m.get("role")) for m in earlier)
    return Unusable("responses with messages before the assistant's reply that are not the row's prompt",
                    f"'{column}' has {len(earlier)} earlier message(s) ({roles}) that differ from '{prompt_column}'",
                    f"put the conversation before the reply in '{prompt_column}' and only the assistant's final "
                    f"message in '{column}' (TRL's conversational format)")


def pack_examples(rows: list[dict], max_length: int) -> list[dict]:
    """Greedy packing in data order: ``{"input_ids", "loss_mask", "index"}`` rows of at most
    ``max_length`` tokens, ``loss_mask`` 1 on response tokens (aligned with ``input_ids``); ``index``
    is the packed row's number (a fixed row of the packed data set)."""
    packed: list[dict] = []
    ids: list[int] = []
    mask: list[int] = []
    for row in rows:
        example = row["prompt_ids"] + row["response_ids"]
        if ids and len(ids) + len(example) > max_length:
            packed.append({"input_ids": ids, "loss_mask": mask, "index": len(packed)})
            ids, mask = [], []
        ids = ids + example
        mask = mask + [0] * len(row["prompt_ids"]) + [1] * len(row["response_ids"])
    if ids:
        packed.append({"input_ids": ids, "loss_mask": mask, "index": len(packed)})
    return packed


def collate_packed(rows: list[dict], pad_token_id: int) -> SequenceBatch:
    """Right-padded packed rows: ``prompt_length`` 1, ``extras["loss_mask"]`` ``[N, R]`` over the response block."""
    width = max(2, max(len(r["input_ids"]) for r in rows))  # at least one position in the response block
    input_ids, attention_mask = pad_rows([r["input_ids"] for r in rows], pad_token_id, "right", width)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, row in enumerate(rows):
        loss_mask[i, :len(row["loss_mask"])] = torch.tensor(row["loss_mask"], dtype=torch.float32)
    return SequenceBatch(input_ids, attention_mask, 1, group_size=1,
                         extras={"index": torch.tensor([r["index"] for r in rows]), "loss_mask": loss_mask[:, 1:]})


class PreferenceDataModule(OfflineDataModule):
    """Pairwise preferences (prompt, chosen, rejected); batches interleave chosen and rejected rows
    (``group_size`` 2: row 2i chosen, 2i + 1 rejected).

    Args:
        chosen_column: column with the preferred response.
        rejected_column: column with the other response.
        margin_column: optional column with a preference strength per pair (reward-model margin).
        (the others as in :class:`OfflineDataModule`)
    """

    response_columns = ("chosen", "rejected")

    def __init__(self, train_file: str, tokenizer: Optional[str] = None, chosen_column: str = "chosen",
                 rejected_column: str = "rejected", margin_column: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(train_file, tokenizer, **kwargs)
        self.chosen_column, self.rejected_column, self.margin_column = chosen_column, rejected_column, margin_column

    def columns(self) -> list[str]:
        return [self.prompt_column, self.chosen_column, self.rejected_column] + (
            [self.margin_column] if self.margin_column else [])

    def _check_format(self, records: list, field: str, path: str) -> None:
        """TRL's implicit-prompt format (whole conversations or texts in chosen/rejected, no prompt column): one
        error that says so and how to split the rows, for conversations and for text alike."""
        first = records[0] if records and isinstance(records[0], dict) else {}
        if self.prompt_column in first or self.chosen_column not in first or self.rejected_column not in first:
            return
        chosen, rejected = self.chosen_column, self.rejected_column
        present = ", ".join(sorted(map(str, first))) or "none"
        if difflib.get_close_matches(self.prompt_column, [str(name) for name in first], n=1):
            return  # a prompt column by another name: the generic error names it ("did you mean ...?")
        other = ("; if the prompts are in another column, set data.init_args.prompt_column to it "
                 "(--data.prompt_column NAME)")
        if isinstance(first.get(chosen), list):
            raise RecipeError(field, f"'{path}' is in the implicit-prompt format (whole '{chosen}'/'{rejected}' "
                              f"conversations, no '{self.prompt_column}' column; columns: {present})",
                              f"split each row into the shared prompt messages ('{self.prompt_column}') and the two "
                              f"final assistant messages ('{chosen}', '{rejected}'){other}")
        if not (isinstance(first.get(chosen), str) and isinstance(first.get(rejected), str)):
            return  # the generic missing-column error
        raise RecipeError(field, f"'{path}' has no '{self.prompt_column}' column (columns: {present}): text pairs "
                          f"in '{chosen}'/'{rejected}' without a prompt column (TRL's implicit-prompt format) are "
                          "not read, as the prompt cannot be told from the responses",
                          f"split each row into the shared prompt ('{self.prompt_column}') and the two responses "
                          f"that follow it ('{chosen}', '{rejected}'){other}")

    def encode(self, record: dict, index: int) -> dict | Unusable:
        parts = self._encode_parts(record, self.chosen_column, self.rejected_column)
        if isinstance(parts, Unusable):
            return parts
        prompt, chosen, rejected = parts
        if chosen == rejected:
            return Unusable("identical chosen and rejected responses (no preference to learn from)",
                            fix=f"give each pair two different responses, the preferred one in '{self.chosen_column}'")
        row = {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected, "index": index}
        if self.margin_column:
            margin = as_number(record.get(self.margin_column))
            if margin is None:
                return Unusable("margins that are not finite numbers", repr(record.get(self.margin_column))[:40],
                                f"store a number in '{self.margin_column}' for every pair")
            row["margin"] = margin
        return row

    def collate(self, rows: list[dict]) -> SequenceBatch:
        prompts = [r["prompt_ids"] for r in rows for _ in range(2)]
        responses = [ids for r in rows for ids in (r["chosen_ids"], r["rejected_ids"])]
        input_ids, attention_mask, width = pad_prompt_response(prompts, responses, self.tokenizer.pad_token_id)
        extras = {"index": torch.tensor([r["index"] for r in rows]).repeat_interleave(2),
                  "position": torch.tensor([0, 1]).repeat(len(rows))}
        if self.margin_column:
            extras["margin"] = torch.tensor([r["margin"] for r in rows]).repeat_interleave(2)
        return SequenceBatch(input_ids, attention_mask, width, group_size=2, extras=extras)


def as_number(value: Any) -> Optional[float]:
    """``value`` as a finite float (a number, or text of one as CSV files hold it); None otherwise."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value) if isinstance(value, (int, float, str)) else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def check_both_labels(rows: list[dict], path: str, label_column: str) -> None:
    """KTO contrasts desirable with undesirable completions: training data of one kind only is an error."""
    desirable_rows = sum(row["label"] > 0.5 for row in rows)
    if 0 < desirable_rows < len(rows):
        return
    kind, other = ("desirable", "undesirable") if desirable_rows else ("undesirable", "desirable")
    fix = ("check the labels (true/1/yes/desirable/good marks a good completion)" +
           ("; to learn from good completions only, use SFT (rlhf_lightning.objectives.SFT)" if desirable_rows else ""))
    raise RecipeError("data.init_args.label_column",
                      f"all {len(rows)} usable rows of '{path}' are labelled {kind}: KTO needs {other} "
                      "completions too (its loss weighs one kind against the other)", fix)


DESIRABLE = {"true": True, "1": True, "yes": True, "desirable": True, "good": True,
             "false": False, "0": False, "no": False, "undesirable": False, "bad": False}


def desirable(label: Any) -> Optional[bool]:
    """A KTO label as a bool; ``None`` for anything else (``-1``, ``2``, ``"maybe"``, a missing value), which
    ``bool()`` would have read as desirable."""
    if isinstance(label, bool):
        return label
    if isinstance(label, (int, float)) and label in (0, 1):
        return bool(label)
    if isinstance(label, str):
        return DESIRABLE.get(label.strip().lower())
    return None


class UnpairedDataModule(OfflineDataModule):
    """Unpaired feedback (prompt, completion, desirable label) for KTO. Each row is followed by a
    mismatched row (its prompt with the next row's completion, ``extras["mismatched"]``) from which
    KTO estimates its reference point (``group_size`` 2).

    Training needs both kinds of label (KTO weighs one against the other): a training split whose usable
    rows are all desirable or all undesirable is an error.

    Args:
        completion_column: column with the response.
        label_column: column with the label: desirable is ``true``, ``1`` or the text (any case) "true", "1",
            "yes", "desirable", "good"; undesirable is ``false``, ``0`` or "false", "0", "no", "undesirable",
            "bad" (any other value is a bad row, per ``on_bad_row``).
        (the others as in :class:`OfflineDataModule`)
    """

    response_columns = ("completion",)

    def __init__(self, train_file: str, tokenizer: Optional[str] = None, completion_column: str = "completion",
                 label_column: str = "label", **kwargs: Any) -> None:
        super().__init__(train_file, tokenizer, **kwargs)
        self.completion_column, self.label_column = completion_column, label_column

    def columns(self) -> list[str]:
        return [self.prompt_column, self.completion_column, self.label_column]

    def encode(self, record: dict, index: int) -> dict | Unusable:
        parts = self._encode_parts(record, self.completion_column)
        if isinstance(parts, Unusable):
            return parts
        prompt, completion = parts
        label = desirable(record.get(self.label_column))
        if label is None:
            return Unusable("labels that are not true/false, 1/0 or desirable/undesirable (or yes/no, good/bad)",
                            repr(record.get(self.label_column))[:40],
                            f"label each row in '{self.label_column}' true/1/yes/desirable/good or "
                            "false/0/no/undesirable/bad")
        return {"prompt_ids": prompt, "completion_ids": completion, "label": float(label), "index": index}

    def train_dataloader(self) -> DataLoader:
        check_both_labels(self.splits["train"], self.train_file, self.label_column)
        return super().train_dataloader()

    def collate(self, rows: list[dict]) -> SequenceBatch:
        n = len(rows)
        prompts, responses = [], []
        for i, row in enumerate(rows):
            other = rows[(i + 1) % n] if n > 1 else row
            prompts += [row["prompt_ids"], row["prompt_ids"]]
            responses += [row["completion_ids"], other["completion_ids"]]
        input_ids, attention_mask, width = pad_prompt_response(prompts, responses, self.tokenizer.pad_token_id)
        labels = torch.tensor([r["label"] for r in rows]).repeat_interleave(2)
        extras = {"label": labels, "mismatched": torch.tensor([0.0, 1.0]).repeat(n),
                  "index": torch.tensor([r["index"] for r in rows]).repeat_interleave(2)}
        return SequenceBatch(input_ids, attention_mask, width, group_size=2, extras=extras)
