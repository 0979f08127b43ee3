"""Reference log-probs computed once per data set (offline objectives), instead of a frozen
reference forward on every batch: on a GPU this saves that forward pass and the reference's memory."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from rlhf_lightning.batches import SequenceBatch
from rlhf_lightning.errors import RecipeError
from rlhf_lightning.progress import progress_bar

ReferenceLogprobs = Callable[[Tensor, Tensor, int], Tensor]  # (input_ids, attention_mask, P) → ln π_ref [N, R]


class ReferenceCache:
    """``ln π_ref`` per response token of every training row, keyed by (data set row, position in group)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[int, int], Tensor] = {}

    @staticmethod
    def _keys(batch: SequenceBatch) -> list[tuple[int, int]]:
        if "index" not in batch.extras or "mismatched" in batch.extras:
            raise RecipeError("model.init_args.precompute_reference",
                              "precomputed reference log-probs need batches whose rows are fixed data set rows "
                              "(SFT or preference data); KTO's mismatched rows change from batch to batch",
                              "set precompute_reference: false for this objective")
        positions = batch.extras.get("position", torch.zeros(len(batch), dtype=torch.long))
        return list(zip(batch.extras["index"].tolist(), positions.tolist()))

    @classmethod
    @torch.no_grad()
    def build(cls, reference_logprobs: ReferenceLogprobs, datamodule, device: torch.device,
              show_progress: bool = True) -> "ReferenceCache":
        """One reference forward over all training rows (in order, batch by batch)."""
        cache = cls()
        rows = datamodule.splits["train"]
        size = datamodule.batch_size
        # (in a terminal the bar goes when done: it runs under Lightning's training bar, which has started)
        for start in progress_bar(range(0, len(rows), size), desc="reference log-probs", unit="batches",
                                  disable=not show_progress, leave=False):
            batch = datamodule.collate(rows[start:start + size]).to(device)
            logprobs = reference_logprobs(batch.input_ids, batch.attention_mask, batch.prompt_length)
            lengths = batch.response_mask.sum(-1).long().tolist()
            for key, values, length in zip(cls._keys(batch), logprobs, lengths):
                cache.rows[key] = values[:length].cpu()
        return cache

    def lookup(self, batch: SequenceBatch) -> Tensor:
        """``[N, R]`` cached reference log-probs of the batch's rows (0 on padding)."""
        out = torch.zeros(batch.response_mask.shape, dtype=torch.float32)
        for i, key in enumerate(self._keys(batch)):
            values = self.rows[key]
            out[i, :len(values)] = values
        return out.to(batch.input_ids.device)
