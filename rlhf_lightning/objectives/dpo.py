"""DPO: Direct Preference Optimization (Rafailov et al., 2023), with the conservative (cDPO),
length-normalised (Tülu 3) and reference-free options; the base of IPO, SLiC and SimPO."""

from __future__ import annotations

from dataclasses import replace

from torch import Tensor

from rlhf_lightning.batches import SequenceBatch
from rlhf_lightning.errors import RecipeError, raise_all
from rlhf_lightning.logprobs import masked_sum
from rlhf_lightning.objectives.base import Needs, Objective, flag_problems, number_problems
from rlhf_lightning.pairwise import sigmoid_loss


def sequence_logprob(logprobs: Tensor, mask: Tensor, length_normalized: bool = False) -> Tensor:
    """``Σ_t m_t·lp_t`` per row (``[N, R]`` → ``[N]``), divided by ``|y| = Σ_t m_t`` when ``length_normalized``.

    Padding positions are zeroed first, so whatever they hold (even inf or nan) changes neither the
    value nor the gradient. An empty row gives 0.
    """
    total = masked_sum(logprobs.masked_fill(mask == 0, 0.0), mask)  # [N]
    if length_normalized:
        total = total / mask.sum(-1).clamp(min=1.0)
    return total


def split_pairs(values: Tensor, batch: SequenceBatch, who: str) -> tuple[Tensor, Tensor]:
    """Per-row ``[N]`` values of a preference batch as ``(chosen [G], rejected [G])``: row ``2i`` is
    ``y_w`` of pair ``i``, row ``2i+1`` its ``y_l``."""
    if batch.group_size != 2:
        raise ValueError(f"{who} compares a chosen and a rejected response to the same prompt, got a batch with "
                         f"groups of {batch.group_size} rows; use a preference (pairs) data module")
    pairs = values.view(-1, 2)  # [G, 2]
    return pairs[:, 0], pairs[:, 1]


class DPO(Objective):
    """Logistic regression of the preference labels on the policy's implicit reward
    ``β·ln(π_θ/π_ref)`` (Rafailov et al., 2023, "Direct Preference Optimization", Eq. 7)::

        h    = [ln π_θ(y_w|x) − ln π_ref(y_w|x)] − [ln π_θ(y_l|x) − ln π_ref(y_l|x)]     # [G], one per pair
        L(θ) = mean over pairs of  −(1 − ε)·ln σ(β·h) − ε·ln σ(−β·h)

    with ``ln π(y|x)`` summed over the response tokens (prompt and padding masked). ``ε = 0`` is
    plain DPO; ``ε > 0`` is conservative DPO (cDPO, label smoothing: each label is taken to be
    wrong with probability ε). Gradient:
    ``∂L/∂h = β·[ε·σ(βh) − (1 − ε)·σ(−βh)] / G`` — the winner's log-prob goes up and the loser's
    down, weighted by how wrong the implicit reward model is (REBEL paper, TL;DR: β = 0.05).

    Options, each a small change to ``h``:

    - ``length_normalized`` (Tülu 3, Lambert et al., 2024): every ``ln π`` is divided by the
      response length ``|y|``, so ``h`` compares per-token log-ratios and long responses are not
      favoured; the per-token log-ratios are small, so it wants a much larger β (Tülu 3 uses 5).
    - ``reference_free``: the ``π_ref`` terms are dropped (``h = ln π_θ(y_w|x) − ln π_θ(y_l|x)``)
      and ``needs.reference`` becomes False, so no reference model is loaded or run.

    Subclasses change :meth:`margin` (how ``h`` is made) or :meth:`pair_loss` (the loss on ``h``):
    :class:`~rlhf_lightning.objectives.ipo.IPO`, :class:`~rlhf_lightning.objectives.slic.SLiC`,
    :class:`~rlhf_lightning.objectives.simpo.SimPO`.

    Batch layout: ``group_size`` 2, row ``2i`` the chosen ``y_w`` and row ``2i+1`` the rejected
    ``y_l`` of pair ``i``; ``batch.ref_logprobs`` ``[N, R]`` when a reference is needed. The loss is
    a mean over pairs, so the default row-share :meth:`chunk_weight` is exact for micro-batches.

    Metrics (``<ns>`` is :attr:`metric_namespace`): ``loss/<ns>``; ``<ns>/accuracy`` (share of
    pairs with ``h > 0``); ``<ns>/margin`` (mean ``h``, without β); ``<ns>/chosen_reward`` and
    ``<ns>/rejected_reward`` (mean implicit reward ``β·ln(π_θ/π_ref)`` of ``y_w`` / ``y_l``, with the
    same normalisation and reference as ``h``); ``<ns>/reward_margin`` (their mean difference, β-scaled like
    TRL's ``rewards/margins``); ``<ns>/chosen_logprob`` and
    ``<ns>/rejected_logprob`` (mean ``ln π_θ(y|x)``, summed over tokens, to watch both fall).

    Args:
        beta: β > 0, the inverse temperature of the implicit reward ``β·ln(π_θ/π_ref)``; smaller
            keeps the policy closer to the reference (the REBEL paper uses 0.05 on TL;DR).
        label_smoothing: ε in ``[0, 0.5)``, the assumed rate of flipped labels (cDPO); 0 is plain DPO.
        length_normalized: divide each ``ln π`` by the response length (Tülu 3's length-normalised DPO).
        reference_free: drop ``π_ref`` from ``h`` (no reference model is needed).
    """

    needs = Needs(rollout=False, reference=True)
    metric_namespace = "dpo"

    @property
    def summary_metrics(self) -> dict[str, str]:  # validation metric → summary.json key
        ns = self.metric_namespace
        return {f"{ns}/accuracy": "reward_accuracy", f"{ns}/reward_margin": "reward_margin"}

    def __init__(self, beta: float = 0.05, label_smoothing: float = 0.0, length_normalized: bool = False,
                 reference_free: bool = False) -> None:
        super().__init__()
        raise_all(self.beta_problems(beta) + self.label_smoothing_problems(label_smoothing)
                  + flag_problems(length_normalized=length_normalized, reference_free=reference_free))
        self.beta = float(beta)
        self.label_smoothing = float(label_smoothing)
        self.length_normalized = length_normalized
        self.reference_free = reference_free
        self.needs = replace(self.needs, reference=not reference_free)

    @staticmethod
    def beta_problems(beta: float, fix: str = "the REBEL paper's DPO uses 0.05") -> list[RecipeError]:
        return number_problems("beta", beta, lambda b: b > 0, "a number > 0", fix)

    @staticmethod
    def label_smoothing_problems(label_smoothing: float) -> list[RecipeError]:
        return number_problems("label_smoothing", label_smoothing, lambda e: 0.0 <= e < 0.5, "in [0, 0.5)",
                               "use 0 for no label smoothing")

    # ------------------------------------------------------------------ the maths
    def log_ratios(self, logprobs: Tensor, batch: SequenceBatch) -> Tensor:
        """``[N]`` per response: ``ln π_θ(y|x) − ln π_ref(y|x)`` (without ``π_ref`` if reference-free),
        divided by ``|y|`` if length-normalised."""
        mask = batch.response_mask  # [N, R]
        ratio = logprobs
        if not self.reference_free:
            if batch.ref_logprobs is None:
                raise ValueError(f"{type(self).__name__} needs reference log-probs (batch.ref_logprobs); the module "
                                 "fills them when the objective needs a reference (or set reference_free)")
            ratio = logprobs - batch.ref_logprobs.masked_fill(mask == 0, 0.0)  # [N, R]
        return sequence_logprob(ratio, mask, self.length_normalized)  # [N]

    def margin(self, logprobs: Tensor, batch: SequenceBatch) -> Tensor:
        """``h`` per pair, ``[G]``: the chosen response's log-ratio minus the rejected one's."""
        chosen, rejected = split_pairs(self.log_ratios(logprobs, batch), batch, type(self).__name__)
        return chosen - rejected

    def pair_loss(self, h: Tensor) -> Tensor:
        """Per-pair loss ``[G]`` on the margins: ``−(1 − ε)·ln σ(βh) − ε·ln σ(−βh)``."""
        return sigmoid_loss(h, self.beta, self.label_smoothing)

    def loss(self, logprobs: Tensor, batch: SequenceBatch, **outputs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        h = self.margin(logprobs, batch)  # [G]
        loss = self.pair_loss(h).mean()
        return loss, self.pair_metrics(loss, h, logprobs, batch)

    def pair_metrics(self, loss: Tensor, h: Tensor, logprobs: Tensor, batch: SequenceBatch) -> dict[str, Tensor]:
        """Detached scalar metrics (means over pairs, so exact under row-share chunk weighting)."""
        logprobs, h = logprobs.detach(), h.detach()
        chosen_reward, rejected_reward = split_pairs(self.beta * self.log_ratios(logprobs, batch), batch,
                                                     type(self).__name__)  # [G] each
        chosen_logprob, rejected_logprob = split_pairs(sequence_logprob(logprobs, batch.response_mask), batch,
                                                       type(self).__name__)  # [G] each
        ns = self.metric_namespace
        return {
            f"loss/{ns}": loss.detach(),
            f"{ns}/accuracy": (h > 0).float().mean(),
            f"{ns}/margin": h.mean(),
            f"{ns}/chosen_reward": chosen_reward.mean(),
            f"{ns}/rejected_reward": rejected_reward.mean(),
            f"{ns}/reward_margin": (chosen_reward - rejected_reward).mean(),
            f"{ns}/chosen_logprob": chosen_logprob.mean(),
            f"{ns}/rejected_logprob": rejected_logprob.mean(),
        }
