"""IPO: Identity Preference Optimisation, ΨPO with the identity map (Azar et al., 2023)."""

from __future__ import annotations

from torch import Tensor

from rlhf_lightning.errors import raise_all
from rlhf_lightning.objectives.base import flag_problems, number_problems
from rlhf_lightning.objectives.dpo import DPO
from rlhf_lightning.pairwise import ipo_loss


class IPO(DPO):
    """Least-squares regression of DPO's margin onto a fixed target (Azar et al., 2023, "A General
    Theoretical Paradigm to Understand Learning from Human Preferences", Eq. 17)::

        h    = [ln π_θ(y_w|x) − ln π_ref(y_w|x)] − [ln π_θ(y_l|x) − ln π_ref(y_l|x)]     # [G]
        L(θ) = mean over pairs of  (h − 1/(2τ))²

    Unlike DPO's logistic loss, which keeps pushing ``h`` up even on pairs it already ranks right
    (so that deterministic preferences drive ``π_θ/π_ref`` to 0 or ∞), the square pulls ``h`` to
    ``1/(2τ)`` and no further: τ plays the role of DPO's β (smaller τ, larger target, further from
    the reference). Gradient: ``∂L/∂h = 2·(h − 1/(2τ)) / G``.

    Normalisation: the paper's ``h`` uses sequence log-probabilities ``ln π(y|x)`` (sums over
    tokens), and that is the default here. With sums the target ``1/(2τ)`` is a total over the
    response, so its strength depends on the response length; ``length_normalized: true`` divides
    each ``ln π`` by ``|y|`` (the per-token mean log-ratio), which is what TRL's ``ipo`` loss does
    after consulting the paper's authors (not written in the paper itself).
    ``reference_free`` drops ``π_ref`` as for :class:`DPO`.

    Metrics as for :class:`DPO` under ``ipo/``; the implicit rewards there are the plain log-ratios
    (β = 1), in nats.

    Args:
        tau: τ > 0, the regularisation towards the reference; ``h`` is regressed onto ``1/(2τ)``.
        length_normalized: divide each ``ln π`` by the response length (per-token log-ratios).
        reference_free: drop ``π_ref`` from ``h`` (no reference model is needed).
    """

    metric_namespace = "ipo"

    def __init__(self, tau: float = 0.1, length_normalized: bool = False, reference_free: bool = False) -> None:
        raise_all(number_problems("tau", tau, lambda t: t > 0, "a number > 0",
                                  "e.g. 0.1 (target margin 5 nats); smaller τ, larger target")
                  + flag_problems(length_normalized=length_normalized, reference_free=reference_free))
        super().__init__(beta=1.0, length_normalized=length_normalized, reference_free=reference_free)
        self.tau = float(tau)

    def pair_loss(self, h: Tensor) -> Tensor:
        """Per-pair loss ``[G]``: ``(h − 1/(2τ))²``."""
        return ipo_loss(h, self.tau)
