"""SLiC: Sequence Likelihood Calibration with Human Feedback, the hinge form (Zhao et al., 2023)."""

from __future__ import annotations

from torch import Tensor

from rlhf_lightning.batches import SequenceBatch
from rlhf_lightning.errors import raise_all
from rlhf_lightning.objectives.base import flag_problems, number_problems
from rlhf_lightning.objectives.dpo import DPO, sequence_logprob, split_pairs
from rlhf_lightning.pairwise import hinge_loss


class SLiC(DPO):
    """A hinge (max-margin) loss on DPO's margin, plus SLiC-HF's optional likelihood regulariser::

        h    = [ln π_θ(y_w|x) − ln π_ref(y_w|x)] − [ln π_θ(y_l|x) − ln π_ref(y_l|x)]     # [G]
        L(θ) = mean over pairs of  max(0, 1 − β·h)  −  λ·ln π_θ(y_w|x)

    A pair stops contributing once ``h ≥ 1/β``; below that every pair pulls with the same force:
    ``∂L/∂h = −β/G`` if ``βh < 1``, else 0 (the regulariser adds ``−λ/G`` to each chosen token).

    Relation to the paper (Zhao et al., 2023, "SLiC-HF: Sequence Likelihood Calibration with Human
    Feedback", Eq. 1): SLiC-HF's calibration loss has no reference model,
    ``max(0, δ − ln π_θ(y_w|x) + ln π_θ(y_l|x)) − λ·ln π_θ(y_ref|x)``, where the regulariser is the
    cross-entropy on the SFT targets. The reference-anchored hinge above (the "hinge" loss of the
    DPO literature and of TRL; the guide's form) is the default; ``reference_free: true`` with
    ``β = 1/δ`` gives the paper's calibration loss scaled by ``β`` (``max(0, 1 − βd) = β·max(0, δ − d)``),
    and ``sft_weight`` λ adds the regulariser with ``y_w`` standing in for the SFT target (summed
    over tokens, as the paper's sequence log-likelihood). ``sft_weight: 0`` (default) is the plain hinge.

    Metrics as for :class:`DPO` under ``slic/``, plus ``slic/hinge`` and ``slic/sft`` (mean
    ``−ln π_θ(y_w|x)``) when ``sft_weight > 0``.

    Args:
        beta: β > 0; the hinge is flat once ``h ≥ 1/β`` (``1/β`` is SLiC's margin δ).
        sft_weight: λ ≥ 0, the weight of the ``−ln π_θ(y_w|x)`` regulariser (0: none).
        length_normalized: divide each ``ln π`` by the response length.
        reference_free: drop ``π_ref`` from ``h``, as in SLiC-HF (no reference model is needed).
    """

    metric_namespace = "slic"

    def __init__(self, beta: float = 0.1, sft_weight: float = 0.0, length_normalized: bool = False,
                 reference_free: bool = False) -> None:
        raise_all(self.beta_problems(beta, "e.g. 0.1 (the hinge is flat once h ≥ 10 nats)")
                  + number_problems("sft_weight", sft_weight, lambda w: w >= 0, "a number ≥ 0", "use 0 for none")
                  + flag_problems(length_normalized=length_normalized, reference_free=reference_free))
        super().__init__(beta=beta, length_normalized=length_normalized, reference_free=reference_free)
        self.sft_weight = float(sft_weight)

    def pair_loss(self, h: Tensor) -> Tensor:
        """Per-pair loss ``[G]``: ``max(0, 1 − βh)``."""
        return hinge_loss(h, self.beta)

    def loss(self, logprobs: Tensor, batch: SequenceBatch, **outputs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        hinge, metrics = super().loss(logprobs, batch)
        if not self.sft_weight:
            return hinge, metrics
        chosen, _ = split_pairs(sequence_logprob(logprobs, batch.response_mask), batch, "SLiC")  # [G] ln π_θ(y_w|x)
        sft = -chosen.mean()
        loss = hinge + self.sft_weight * sft
        metrics.update({"loss/slic": loss.detach(), "slic/hinge": hinge.detach(), "slic/sft": sft.detach()})
        return loss, metrics
