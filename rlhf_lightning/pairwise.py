"""Pairwise-preference losses on a margin ``h``, shared by online (iterative) DPO and the offline DPO family.

Every function takes the per-pair margin ``h`` (``[G]``, one value per preference pair), usually

    h = [ln π_θ(y_w|x) − ln π_ref(y_w|x)] − [ln π_θ(y_l|x) − ln π_ref(y_l|x)]

(online DPO puts ``π_t``, the rollout policy, in place of ``π_ref``; reference-free variants drop
the ``π_ref`` terms), and returns the **unreduced** per-pair loss ``[G]``, so that the caller decides
how to average (e.g. over non-tied pairs only) and how to weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sigmoid_loss(h: Tensor, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """DPO's logistic loss, with optional label smoothing (conservative DPO)::

        ℓ(h) = −(1 − ε)·ln σ(β·h) − ε·ln σ(−β·h)

    ``ε = 0`` is plain DPO (Rafailov et al., 2023), ``−ln σ(βh)``; ``ε > 0`` treats each label as
    flipped with probability ε. Computed with ``logsigmoid`` so large ``|βh|`` neither overflows nor
    loses the gradient.

    Args:
        h: ``[G]`` margins (winner minus loser log-ratio).
        beta: β, the inverse temperature of the implicit reward ``β·ln(π_θ/π_ref)``.
        label_smoothing: ε in ``[0, 0.5)``.

    Returns:
        ``[G]`` per-pair losses.
    """
    logits = beta * h  # [G]
    loss = -F.logsigmoid(logits)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-logits)
    return loss


def ipo_loss(h: Tensor, tau: float) -> Tensor:
    """IPO's squared loss (Azar et al., 2023): regress the margin onto ``1/(2τ)``::

        ℓ(h) = (h − 1/(2τ))²

    Args:
        h: ``[G]`` margins.
        tau: τ > 0, the strength of the regularisation towards the reference (smaller τ, larger target).

    Returns:
        ``[G]`` per-pair losses.
    """
    return (h - 1.0 / (2.0 * tau)).pow(2)


def hinge_loss(h: Tensor, beta: float) -> Tensor:
    """SLiC's hinge loss (Zhao et al., 2023)::

        ℓ(h) = max(0, 1 − β·h)

    Args:
        h: ``[G]`` margins.
        beta: β; the loss is zero once ``h ≥ 1/β``.

    Returns:
        ``[G]`` per-pair losses.
    """
    return torch.relu(1.0 - beta * h)
