"""The scored rollout a rollout callback hands to the objective."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Optional

import torch
from torch import Tensor


@dataclass
class Rollout:
    """Generations for a batch of prompts, ``group_size`` consecutive rows per prompt.

    Shapes: ``N = num_prompts · group_size`` rows, ``L = P + R`` tokens (left-padded prompt block of
    width ``P``, right-padded response block of width ``R``).
    """

    input_ids: Tensor  # [N, L]
    attention_mask: Tensor  # [N, L]
    prompt_length: int  # P
    old_logprobs: Tensor  # [N, R] ln π_t per response token (fixed at rollout time), 0 on padding
    ref_logprobs: Tensor  # [N, R] ln π_ref per response token, 0 on padding
    rewards: Tensor  # [N] raw reward r(x, y) (after the no-EOS rule)
    shaped_rewards: Tensor  # [N] r̃(x, y) = r − γ·(ln π_t − ln π_ref)
    group_size: int  # samples per prompt
    temperature: float = 1.0  # sampling temperature; log-probs use logits / temperature
    kl_coef: float = 0.0  # γ (β for PPO) used to shape the rewards
    values: Optional[Tensor] = None  # [N, R] critic values V(x, y_<i) at rollout time (critic objectives)
    extras: dict[str, Tensor] = field(default_factory=dict)  # per-row tensors an objective adds in prepare()
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def response_mask(self) -> Tensor:
        """``[N, R]`` float mask of real response tokens (EOS included)."""
        return self.attention_mask[:, self.prompt_length:].float()

    @property
    def num_prompts(self) -> int:
        return self.input_ids.shape[0] // self.group_size

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select_rows(self, rows: Tensor, group_size: Optional[int] = None) -> "Rollout":
        """A rollout of the given rows (every per-row tensor and extra), e.g. to pick pairs out of groups."""
        rows = rows.to(self.input_ids.device)
        tensors = {f.name: getattr(self, f.name)[rows] for f in fields(self)
                   if isinstance(getattr(self, f.name), Tensor)}
        extras = {key: value[rows] for key, value in self.extras.items()}
        return replace(self, **tensors, extras=extras, group_size=group_size or self.group_size, metrics={})

    def select_prompts(self, prompt_indices: Tensor) -> "Rollout":
        """Rows of the given prompts (whole groups, order kept inside each group)."""
        offsets = torch.arange(self.group_size, device=prompt_indices.device)
        rows = (prompt_indices[:, None] * self.group_size + offsets[None, :]).reshape(-1)
        return self.select_rows(rows)

    def grouped(self, values: Tensor) -> Tensor:
        """``[N, ...]`` per-row values as ``[num_prompts, group_size, ...]``."""
        return values.view(self.num_prompts, self.group_size, *values.shape[1:])

    def minibatches(self, num_minibatches: int, generator: torch.Generator | None = None) -> list["Rollout"]:
        """Shuffle the prompts and split them into ``num_minibatches`` near-equal groups of whole prompts
        (fewer only when there are fewer prompts than minibatches)."""
        order = torch.randperm(self.num_prompts, generator=generator)
        return [self.select_prompts(part) for part in order.tensor_split(min(num_minibatches, self.num_prompts))]

    def split(self, max_rows: int) -> list["Rollout"]:
        """Consecutive chunks of whole prompts with at most ``max_rows`` rows each (at least one prompt)."""
        prompts_per_chunk = max(1, max_rows // self.group_size)
        order = torch.arange(self.num_prompts)
        return [self.select_prompts(chunk) for chunk in order.split(prompts_per_chunk)]
