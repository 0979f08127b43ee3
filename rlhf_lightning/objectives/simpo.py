"""SimPO: Simple Preference Optimization with a reference-free reward (Meng et al., 2024)."""

from __future__ import annotations

from torch import Tensor

from rlhf_lightning.errors import raise_all
from rlhf_lightning.objectives.base import number_problems
from rlhf_lightning.objectives.dpo import DPO
from rlhf_lightning.pairwise import sigmoid_loss


class SimPO(DPO):
    """DPO with the average token log-probability as the reward and a target reward margin
    (Meng et al., 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward", Eq. 6)::

        r(x, y) = (β/|y|)·ln π_θ(y|x)                                        (no reference model)
        h       = ln π_θ(y_w|x)/|y_w| − ln π_θ(y_l|x)/|y_l|                   # [G]
        L(θ)    = mean over pairs of  −ln σ(r(x, y_w) − r(x, y_l) − γ) = −ln σ(β·(h − γ/β))

    The length-normalised reward is the quantity that sampling favours, and the margin γ asks the
    winner's reward to exceed the loser's by γ, not just by 0. γ is the paper's absolute margin,
    in reward units (it is *not* divided by β here; the authors' code takes the ratio γ/β as its
    knob, ``gamma_beta_ratio``: γ = β·ratio). Gradient:
    ``∂L/∂h = −β·σ(−(βh − γ)) / G`` and ``∂h/∂ln π_θ(y_{w,t}) = 1/|y_w|``.

    This is :class:`DPO` with ``length_normalized`` and ``reference_free`` fixed on and the loss
    shifted by ``γ/β``; ``label_smoothing`` ε works as in cDPO (the authors' code has it too).

    Metrics as for :class:`DPO` under ``simpo/``: ``simpo/margin`` is mean ``h`` (before β and γ),
    ``simpo/accuracy`` the share with ``h > 0`` (the winner's average log-prob is higher), and the
    rewards are ``r(x, y)``.

    Args:
        beta: β > 0, the reward scale; much larger than DPO's β, since it multiplies a per-token mean
            (tuned per model in the paper, 2.0 and up).
        gamma: γ ≥ 0, the target reward margin, in reward units (after β).
        label_smoothing: ε in ``[0, 0.5)``, the assumed rate of flipped labels; 0 in the paper.
    """

    metric_namespace = "simpo"

    def __init__(self, beta: float = 2.0, gamma: float = 0.5, label_smoothing: float = 0.0) -> None:
        raise_all(self.beta_problems(beta, "e.g. 2.0") + self.label_smoothing_problems(label_smoothing)
                  + number_problems("gamma", gamma, lambda g: g >= 0, "a number ≥ 0",
                                    "0 for no margin; the paper tunes γ per model"))
        super().__init__(beta=beta, label_smoothing=label_smoothing, length_normalized=True, reference_free=True)
        self.gamma = float(gamma)

    def pair_loss(self, h: Tensor) -> Tensor:
        """Per-pair loss ``[G]``: ``−(1 − ε)·ln σ(βh − γ) − ε·ln σ(−(βh − γ))``."""
        return sigmoid_loss(h - self.gamma / self.beta, self.beta, self.label_smoothing)
