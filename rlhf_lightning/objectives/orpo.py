"""ORPO: monolithic Odds Ratio Preference Optimization, SFT plus an odds-ratio penalty (Hong et al., 2024)."""

from __future__ import annotations

import torch
from torch import Tensor

from rlhf_lightning.batches import SequenceBatch
from rlhf_lightning.errors import raise_all
from rlhf_lightning.objectives.base import Needs, Objective, number_problems
from rlhf_lightning.objectives.dpo import sequence_logprob, split_pairs
from rlhf_lightning.pairwise import sigmoid_loss

# ln odds needs m = mean token log-prob < 0 (P < 1); a response the policy is certain of (m = 0,
# e.g. one whose tokens all have probability 1 in float32) is read as m = −1e-6: ln odds ≈ 13.8.
MAX_MEAN_LOGPROB = -1e-6


def log_odds(mean_logprob: Tensor) -> Tensor:
    """``ln odds(y) = ln P − ln(1 − P)`` with ``P = exp(m)``, from ``m`` = the mean token log-prob (``m ≤ 0``).

    Computed as ``m − ln(1 − eᵐ)`` in float32 without forming ``P``: ``ln(−expm1(m))`` for
    ``m > −ln 2`` (``P`` near 1, where ``1 − eᵐ`` cancels) and ``log1p(−eᵐ)`` below (``P`` near 0),
    with ``m`` capped at ``MAX_MEAN_LOGPROB`` so that ``P = 1`` gives a finite value (and no gradient).
    ``d ln odds / dm = 1/(1 − P)``.
    """
    m = mean_logprob.float().clamp(max=MAX_MEAN_LOGPROB)
    log1m_p = torch.where(m > -0.6931471805599453, torch.log(-torch.expm1(m)), torch.log1p(-torch.exp(m)))
    return m - log1m_p


class ORPO(Objective):
    """Supervised fine-tuning on the chosen response plus a penalty on the odds ratio of the chosen
    and rejected responses, with no reference model (Hong et al., 2024, "ORPO: Monolithic
    Preference Optimization without Reference Model", Eqs. 6–7)::

        m(y)    = (1/|y|)·Σ_t ln π_θ(y_t|x, y_<t)           mean token log-prob; P(y|x) = exp(m(y))
        ln odds = ln P/(1 − P) = m − ln(1 − eᵐ)
        h       = ln odds(y_w) − ln odds(y_l)                # [G]
        L(θ)    = mean over pairs of  −m(y_w)  +  λ·(−ln σ(h))
                  └── L_SFT: NLL per token of y_w ──┘   └── λ·L_OR ──┘

    The SFT term makes the chosen responses likely; the odds-ratio term, whose gradient is
    ``σ(−h)·[∇m_w/(1 − P_w) − ∇m_l/(1 − P_l)]``, pushes the rejected ones down, mildly (the paper
    argues an odds ratio is gentler than a probability ratio, which with SFT degenerates). The
    paper uses λ = 0.1.

    Normalisation: as in the paper's Eq. 1, ``L_SFT`` is each chosen response's NLL divided by its
    own length, then averaged over pairs (so every pair weighs the same). The authors' code and TRL
    average the NLL over all chosen tokens of the batch instead, so long responses weigh more;
    with equal lengths the two agree. Because every term here is a mean over pairs, the default
    row-share :meth:`chunk_weight` is exact for micro-batches (a token-mean SFT term mixed with a
    pair-mean odds-ratio term could not be weighted exactly by one scalar per chunk).

    Metrics: ``loss/orpo``; ``orpo/sft`` (mean per-token NLL of ``y_w``); ``orpo/odds_ratio_loss``
    (mean ``−ln σ(h)``, before λ); ``orpo/log_odds_ratio`` (mean ``h``); ``orpo/accuracy`` (share
    of pairs with ``h > 0``); ``orpo/chosen_mean_logprob`` and ``orpo/rejected_mean_logprob``
    (mean ``m``, the per-token log-prob).

    Args:
        lam: λ ≥ 0, the weight of the odds-ratio term (0 is SFT on the chosen responses).
    """

    needs = Needs(rollout=False, reference=False)

    summary_metrics = {"orpo/accuracy": "reward_accuracy", "orpo/log_odds_ratio": "log_odds_ratio"}

    def __init__(self, lam: float = 0.1) -> None:
        super().__init__()
        raise_all(number_problems("lam", lam, lambda v: v >= 0, "a number ≥ 0", "the paper uses 0.1"))
        self.lam = float(lam)

    def loss(self, logprobs: Tensor, batch: SequenceBatch, **outputs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        mean_logprob = sequence_logprob(logprobs, batch.response_mask, length_normalized=True)  # [N] m
        chosen, rejected = split_pairs(mean_logprob, batch, "ORPO")  # [G] each
        sft = -chosen.mean()
        h = log_odds(chosen) - log_odds(rejected)  # [G] ln odds ratio
        odds_ratio_loss = sigmoid_loss(h, beta=1.0).mean()
        loss = sft + self.lam * odds_ratio_loss
        h = h.detach()
        metrics = {
            "loss/orpo": loss.detach(),
            "orpo/sft": sft.detach(),
            "orpo/odds_ratio_loss": odds_ratio_loss.detach(),
            "orpo/log_odds_ratio": h.mean(),
            "orpo/accuracy": (h > 0).float().mean(),
            "orpo/chosen_mean_logprob": chosen.detach().mean(),
            "orpo/rejected_mean_logprob": rejected.detach().mean(),
        }
        return loss, metrics
