"""Supervised fine-tuning: token cross-entropy on the response tokens (Ouyang et al., 2022, "InstructGPT", step 1)."""

from __future__ import annotations

from torch import Tensor

from rlhf_lightning.batches import GroupedRows, SequenceBatch
from rlhf_lightning.logprobs import masked_mean
from rlhf_lightning.objectives.base import Needs, Objective


class SFT(Objective):
    """Next-token cross-entropy on demonstrations, averaged over the response tokens of the batch::

        L(θ) = −(1/T) · Σ_i Σ_t m_{i,t} · ln π_θ(y_{i,t} | x_i, y_{i,<t}),     T = Σ_{i,t} m_{i,t}

    with ``m`` the response mask (prompt tokens are never in the response block, padding is 0), so
    the prompt is context only and every response token of the batch weighs the same, whatever the
    length of its row (the token mean of InstructGPT's SFT step, Ouyang et al., 2022; the REBEL
    paper's SFT baseline, Gao et al., 2024, Appendix F: batch 64, lr 3e-6, cosine, 1 epoch).
    Gradient: ``∂L/∂ln π_θ(y_{i,t}|…) = −m_{i,t}/T``. With packed rows (``SFTDataModule(packing=True)``)
    ``m`` is ``batch.extras["loss_mask"]``: 1 on the response tokens of every packed example, 0 on
    their prompt tokens and padding.

    Micro-batches are weighted by their share of the ``T`` response tokens (:meth:`chunk_weight`),
    so a split minibatch has the same loss and gradient as the whole one.

    Metrics: ``loss/sft`` (the mean token NLL), ``sft/perplexity`` (``exp`` of it) and ``sft/tokens``
    (``T``). With micro-batching the module averages metrics with the chunk weights, so the logged
    ``loss/sft`` stays exact while ``sft/perplexity`` becomes the token-weighted mean of the chunks'
    perplexities (an upper bound on the exact one) and ``sft/tokens`` a token-weighted mean of the
    chunks' counts, not their sum.

    No arguments: the batch size, learning rate and schedule are the module's and the trainer's.
    """

    needs = Needs(rollout=False, reference=False)

    def __init__(self) -> None:
        super().__init__()

    def chunk_weight(self, chunk: GroupedRows, whole: GroupedRows) -> float:
        """The chunk's share of the response tokens (exact for a token mean); the row share if there are none."""
        total = float(self._loss_mask(whole).sum())
        if total == 0.0:
            return super().chunk_weight(chunk, whole)
        return float(self._loss_mask(chunk).sum()) / total

    @staticmethod
    def _loss_mask(batch: GroupedRows) -> Tensor:
        """``[N, R]`` tokens the loss averages over: ``extras["loss_mask"]`` (packed rows), else the response mask."""
        mask = batch.extras.get("loss_mask")
        return batch.response_mask if mask is None else mask.to(batch.response_mask)

    def loss(self, logprobs: Tensor, batch: SequenceBatch, **outputs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if batch.group_size != 1:
            raise ValueError(f"SFT trains on single demonstrations (group_size 1), got a batch with groups of "
                             f"{batch.group_size} rows (preference pairs?); use an SFT data module")
        mask = self._loss_mask(batch)  # [N, R] response tokens (of every packed example with packing)
        nll = -masked_mean(logprobs.masked_fill(mask == 0, 0.0), mask)  # [] mean over real response tokens
        metrics = {
            "loss/sft": nll.detach(),
            "sft/perplexity": nll.detach().exp(),
            "sft/tokens": mask.sum().detach(),
        }
        return nll, metrics
