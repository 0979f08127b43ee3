"""Batches of prompt + response rows that objectives consume: the shared row/group bookkeeping and
the offline :class:`SequenceBatch` (the online one is :class:`rlhf_lightning.rollout.Rollout`).

Layout everywhere: ``input_ids`` ``[N, P + R]`` = a left-padded prompt block of width ``P`` and a
right-padded response block of width ``R``; rows come in consecutive groups of ``group_size``
(the samples of one prompt, or the chosen/rejected rows of one preference pair).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Optional, TypeVar

import torch
from torch import Tensor

B = TypeVar("B", bound="GroupedRows")


class GroupedRows:
    """Row selection shared by every batch dataclass with ``input_ids``, ``attention_mask``,
    ``prompt_length``, ``group_size``, ``extras`` and ``metrics`` fields."""

    input_ids: Tensor
    attention_mask: Tensor
    prompt_length: int
    group_size: int
    extras: dict
    metrics: dict

    @property
    def response_mask(self) -> Tensor:
        """``[N, R]`` float mask of real response tokens (EOS included)."""
        return self.attention_mask[:, self.prompt_length:].float()

    @property
    def num_prompts(self) -> int:
        """Number of groups (prompts, or preference pairs)."""
        return self.input_ids.shape[0] // self.group_size

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select_rows(self: B, rows: Tensor, group_size: Optional[int] = None) -> B:
        """The given rows (every per-row tensor field and extra), e.g. to pick pairs out of groups."""
        rows = rows.to(self.input_ids.device)
        tensors = {f.name: getattr(self, f.name)[rows] for f in fields(self)
                   if isinstance(getattr(self, f.name), Tensor)}
        extras = {key: value[rows] for key, value in self.extras.items()}
        return replace(self, **tensors, extras=extras, group_size=group_size or self.group_size,
                       metrics=dict(self.metrics))

    def select_prompts(self: B, prompt_indices: Tensor) -> B:
        """Rows of the given groups (whole groups, order kept inside each group)."""
        offsets = torch.arange(self.group_size, device=prompt_indices.device)
        rows = (prompt_indices[:, None] * self.group_size + offsets[None, :]).reshape(-1)
        return self.select_rows(rows)

    def grouped(self, values: Tensor) -> Tensor:
        """``[N, ...]`` per-row values as ``[num_prompts, group_size, ...]``."""
        return values.view(self.num_prompts, self.group_size, *values.shape[1:])

    def minibatches(self: B, num_minibatches: int, generator: torch.Generator | None = None) -> list[B]:
        """Shuffle the groups and split them into ``num_minibatches`` near-equal parts of whole groups
        (fewer only when there are fewer groups than minibatches). One minibatch is the batch itself."""
        order = torch.randperm(self.num_prompts, generator=generator)  # drawn even when unused: same random stream
        if num_minibatches == 1:
            return [self]
        return [self.select_prompts(part) for part in order.tensor_split(min(num_minibatches, self.num_prompts))]

    def split(self: B, max_rows: int) -> list[B]:
        """Consecutive chunks of whole groups with at most ``max_rows`` rows each (at least one group)."""
        groups_per_chunk = max(1, max_rows // self.group_size)
        order = torch.arange(self.num_prompts)
        return [self.select_prompts(chunk) for chunk in order.split(groups_per_chunk)]


@dataclass
class SequenceBatch(GroupedRows):
    """An offline batch: SFT rows (``group_size`` 1), preference pairs (chosen row then rejected row,
    ``group_size`` 2), or KTO rows (``extras["label"]``).

    ``ref_logprobs`` holds ``ln π_ref`` per response token when the objective needs a reference
    (computed live or taken from a precomputed cache by the module); ``extras`` holds per-row data
    such as ``index`` (the data set row of each group) or ``label``.
    """

    input_ids: Tensor  # [N, L]
    attention_mask: Tensor  # [N, L]
    prompt_length: int  # P
    group_size: int = 1
    ref_logprobs: Optional[Tensor] = None  # [N, R]
    extras: dict[str, Tensor] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def to(self, device: torch.device) -> "SequenceBatch":
        tensors = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                   if isinstance(getattr(self, f.name), Tensor)}
        return replace(self, **tensors, extras={k: v.to(device) for k, v in self.extras.items()})
