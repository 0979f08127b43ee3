"""REBEL: REgression to RElative REward Based RL (Gao et al., 2024, Eq. 1)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, Literal

import torch
from torch import Tensor

from rlhf_lightning.errors import raise_all
from rlhf_lightning.logprobs import masked_sum
from rlhf_lightning.objectives.base import Needs, Objective
from rlhf_lightning.rollout import Rollout

PairSource = Literal["sampled", "best_worst", "dataset"]


class REBEL(Objective):
    """Least-squares regression of relative rewards onto relative log-ratios.

    For two responses ``y, y′`` to the same prompt ``x``::

        L(θ) = E[ ( 1/η · [ (ln π_θ(y|x) − ln π_t(y|x)) − (ln π_θ(y′|x) − ln π_t(y′|x)) ]
                    − (r̃(x, y) − r̃(x, y′)) )² ]

    with ``r̃`` the KL-shaped reward from the rollout. Each rollout batch is optimised for
    ``inner_epochs`` passes with ``π_t`` fixed (paper, TL;DR: η = 1.0, 4 epochs).

    Where the pair comes from (``pairs``; the loss is the same in every case):

    - ``sampled`` (default, Algorithm 1): two samples of ``π_t``.
    - ``best_worst`` (Remark 2 and the UltraFeedback runs of Section 5): ``num_samples`` samples of
      ``π_t`` per prompt; the pair is the best and the worst of them under ``r̃``.
    - ``dataset`` (hybrid training, Remark 1 / Section 3): one sample of ``π_t`` paired with the data
      set's response to the prompt (the data module's ``reference_column``).

    Args:
        eta: η, the step size of the mirror-descent update that the regression solves.
        pairs: ``sampled``, ``best_worst`` or ``dataset`` (see above).
        num_samples: N, samples per prompt to pick the best and worst from (``best_worst`` only; ≥ 2).
        inner_epochs: passes over each rollout batch.
        num_minibatches: optimizer steps per pass.
    """

    needs = Needs(samples_per_prompt=2)

    def __init__(self, eta: float = 1.0, pairs: PairSource = "sampled", num_samples: int = 2,
                 inner_epochs: int = 4, num_minibatches: int = 1) -> None:
        super().__init__(inner_epochs=inner_epochs, num_minibatches=num_minibatches)
        errors = []
        if not (math.isfinite(eta) and eta > 0):
            errors.append(self.field_error("eta", f"must be > 0, got {eta}", "the paper uses 1.0"))
        if pairs not in ("sampled", "best_worst", "dataset"):
            errors.append(self.field_error("pairs", f"must be sampled, best_worst or dataset, got '{pairs}'"))
        if num_samples < 2:
            errors.append(self.field_error("num_samples", f"must be ≥ 2 (best and worst of N), got {num_samples}",
                                           "e.g. 5, as in the paper's best-of-5 / worst-of-5 runs"))
        elif num_samples != 2 and pairs != "best_worst":
            errors.append(self.field_error("num_samples", f"is only used with pairs: best_worst, got {num_samples} "
                                           f"with pairs: {pairs}", "set pairs: best_worst or leave num_samples at 2"))
        raise_all(errors)
        self.eta = eta
        self.pairs = pairs
        self.num_samples = num_samples
        # what the Rollout callback generates per prompt: samples of π_t, then data-set responses
        self.needs = replace(self.needs, samples_per_prompt={"sampled": 2, "best_worst": num_samples, "dataset": 1}[pairs],
                             dataset_responses_per_prompt=1 if pairs == "dataset" else 0,
                             selects_rows=pairs == "best_worst")

    def prepare(self, rollout: Rollout, reduce_sum: Callable[[Tensor], Tensor]) -> Rollout:
        """With ``best_worst``: keep, for each prompt, the rows of highest and lowest ``r̃`` (in that order)."""
        if self.pairs != "best_worst":
            return rollout
        if rollout.group_size != self.num_samples:
            raise ValueError(f"REBEL(pairs='best_worst') picks pairs out of {self.num_samples} samples per prompt; "
                             f"got a rollout with {rollout.group_size}")
        shaped = rollout.grouped(rollout.shaped_rewards)  # [B, N]
        best = shaped.argmax(-1)  # [B]
        worst = shaped.argmin(-1)  # [B]; equals best only when all N rewards are equal
        worst = torch.where(worst == best, (best + 1) % rollout.group_size, worst)
        offsets = torch.arange(rollout.num_prompts, device=shaped.device) * rollout.group_size  # [B]
        rows = (offsets[:, None] + torch.stack([best, worst], -1)).reshape(-1)  # [2B] (best, worst) per prompt
        pairs = rollout.select_rows(rows, group_size=2)
        gap = pairs.shaped_rewards.view(-1, 2)
        pairs.metrics = {**rollout.metrics, "rebel/best_worst_gap": (gap[:, 0] - gap[:, 1]).mean().item()}
        return pairs

    def loss(self, logprobs: Tensor, rollout: Rollout) -> tuple[Tensor, dict[str, Tensor]]:
        if rollout.group_size != 2:
            raise ValueError(f"REBEL regresses pairs of responses to the same prompt; got a rollout with "
                             f"{rollout.group_size} responses per prompt (declare needs = Needs(samples_per_prompt=2))")
        mask = rollout.response_mask  # [N, R]
        log_ratio = masked_sum(logprobs - rollout.old_logprobs, mask)  # [N] ln π_θ(y|x) − ln π_t(y|x)
        pairs = log_ratio.view(-1, 2)  # [G, 2] (y, y′) of each prompt
        rewards = rollout.shaped_rewards.view(-1, 2)  # [G, 2]
        predicted = (pairs[:, 0] - pairs[:, 1]) / self.eta  # [G]
        target = rewards[:, 0] - rewards[:, 1]  # [G]
        loss = (predicted - target).pow(2).mean()
        metrics = {
            "loss/rebel": loss.detach(),
            "rebel/predicted_diff": predicted.detach().abs().mean(),
            "rebel/target_diff": target.detach().abs().mean(),
            "rebel/log_ratio": log_ratio.detach().mean(),
        }
        return loss, metrics
