"""KTO: Kahneman–Tversky Optimization from unpaired desirable/undesirable labels (Ethayarajh et al., 2024)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rlhf_lightning.batches import SequenceBatch
from rlhf_lightning.errors import RecipeError, raise_all
from rlhf_lightning.logprobs import masked_mean, masked_sum
from rlhf_lightning.objectives.base import Needs, Objective


class KTO(Objective):
    """A prospect-theoretic value of each labelled response relative to a KL reference point
    (Ethayarajh et al., 2024, "KTO: Model Alignment as Prospect Theoretic Optimization")::

        r_θ(x, y) = ln π_θ(y|x) − ln π_ref(y|x)
        z0        = max(0, mean over mismatched rows (x_i, y_j), j ≠ i, of r_θ(x_i, y_j))     (no gradient)
        v(x, y)   = λ_D · σ(β·(r_θ(x, y) − z0))    if y is desirable
                    λ_U · σ(β·(z0 − r_θ(x, y)))    if y is undesirable
        L(θ)      = mean over labelled rows of  λ_y − v(x, y)

    ``z0`` stands for ``KL(π_θ(y′|x) ‖ π_ref(y′|x))``; as in the paper it is estimated from the batch by
    pairing each prompt with another row's response (a biased but cheap estimate), clamped at 0 and
    not back-propagated, so it only sets where the sigmoid saturates. Desirable responses are pushed
    above the reference point, undesirable ones below it; ``λ_D``/``λ_U`` trade the two off (the
    paper: ``λ_D·n_D / (λ_U·n_U) ∈ [1, 4/3]`` for ``n_D`` desirable and ``n_U`` undesirable examples).
    Gradient, with ``s = σ(β(r_θ − z0))`` and ``n`` labelled rows: ``∂L/∂r_θ = −λ_D·β·s(1 − s)/n``
    (desirable), ``+λ_U·β·s(1 − s)/n`` (undesirable), 0 on the mismatched rows.

    Batch layout (``group_size`` 2): row ``2i`` is the labelled ``(x_i, y_i)`` with
    ``batch.extras["label"]`` (1 desirable, 0 undesirable), row ``2i+1`` the mismatched ``(x_i, y_j)``
    used only for ``z0`` (its label is ignored); ``batch.ref_logprobs`` holds ``ln π_ref`` per token.

    ``z0`` is computed from the rows :meth:`loss` sees: with micro-batching (or several processes) it
    is estimated per micro-batch and per process, as in the paper's per-microbatch estimate, so a
    split minibatch matches the unsplit one only up to that estimate; the rows are still weighted
    exactly (the default row share). Larger micro-batches give a less noisy ``z0``.

    Metrics: ``loss/kto``, ``kto/z0`` (after clamping), ``kto/desirable_reward`` and
    ``kto/undesirable_reward`` (mean ``r_θ`` of the desirable / undesirable rows, in nats, without β;
    0 if the batch has none).

    Args:
        beta: β > 0, the risk-aversion of the value function (how fast it saturates); the paper's default 0.1.
        desirable_weight: λ_D > 0, the weight of desirable examples.
        undesirable_weight: λ_U > 0, the weight of undesirable examples (raise it, or lower λ_D, when
            desirable examples outnumber undesirable ones).
    """

    needs = Needs(rollout=False, reference=True)

    def __init__(self, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> None:
        super().__init__()
        errors: list[RecipeError] = []
        for key, value, fix in [("beta", beta, "the paper uses 0.1"),
                                ("desirable_weight", desirable_weight, "1.0 for balanced data"),
                                ("undesirable_weight", undesirable_weight, "1.0 for balanced data")]:
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                errors.append(self.field_error(key, f"must be a finite number > 0, got {value!r}", fix))
        raise_all(errors)
        self.beta = float(beta)
        self.desirable_weight = float(desirable_weight)
        self.undesirable_weight = float(undesirable_weight)

    def loss(self, logprobs: Tensor, batch: SequenceBatch, **outputs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if batch.group_size != 2:
            raise ValueError(f"KTO reads rows in twos (a labelled row, then a mismatched prompt/response row for "
                             f"the KL reference point), got groups of {batch.group_size} rows; use an unpaired "
                             f"(KTO) data module")
        if batch.ref_logprobs is None:
            raise ValueError("KTO needs reference log-probs (batch.ref_logprobs); the module fills them when the "
                             "objective needs a reference")
        if "label" not in batch.extras:
            raise ValueError("KTO needs a desirable/undesirable label per example (batch.extras['label'])")
        mask = batch.response_mask  # [N, R]
        log_ratio = masked_sum((logprobs - batch.ref_logprobs).masked_fill(mask == 0, 0.0), mask)  # [N]
        log_ratio = log_ratio.view(-1, 2)  # [n, 2]
        reward, mismatched = log_ratio[:, 0], log_ratio[:, 1]  # [n] r_θ(x_i, y_i), r_θ(x_i, y_j)
        z0 = mismatched.detach().mean().clamp(min=0.0)  # [] KL reference point, no gradient
        desirable = batch.extras["label"].view(-1, 2)[:, 0].to(reward) > 0.5  # [n]
        # λ_y − v = λ_D·(1 − σ(β(r − z0))) or λ_U·(1 − σ(β(z0 − r)))
        shifted = self.beta * (reward - z0)  # [n]
        losses = torch.where(desirable, self.desirable_weight * torch.sigmoid(-shifted),
                             self.undesirable_weight * torch.sigmoid(shifted))  # [n]
        loss = losses.mean()
        reward = reward.detach()
        metrics = {
            "loss/kto": loss.detach(),
            "kto/z0": z0,
            "kto/desirable_reward": masked_mean(reward, desirable),
            "kto/undesirable_reward": masked_mean(reward, ~desirable),
        }
        return loss, metrics
