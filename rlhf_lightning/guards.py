"""Finiteness guards: a non-finite reward, loss or gradient stops the run before it reaches the weights.

Each check runs before the update it would poison (rewards before the objective sees them, the loss before
its backward, the gradient norm before the optimizer step), so the weights, and every checkpoint and export
written from them, stay finite: the last checkpoint before the stop is a good one to resume from.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch import Tensor

CAUSES = {
    "reward": "the reward source (model.init_args.reward) returned it: check the function or reward model",
    "shaped reward": "ln π_t − ln π_ref is not finite (a policy or reference forward overflowed), or the reward "
                     "is out of range: check rollout.init_args.kl_coef and the reward's scale",
    "loss": "check the objective's coefficients, the rewards' scale and model.init_args.lr",
    "gradient norm": "the update overflowed: lower model.init_args.lr, keep max_grad_norm set, check the rewards' "
                     "scale (or use bf16-mixed instead of 16-mixed)",
}


class TrainingDiverged(RuntimeError):
    """A quantity of the update is NaN or infinite: the run stops before the weights change."""

    def __init__(self, quantity: str, step: int, detail: str) -> None:
        self.quantity, self.step = quantity, step
        super().__init__(f"{quantity} is not finite at rollout batch {step} ({detail}); the weights were not "
                         f"updated with it, and the last checkpoint written is from before this batch\n"
                         f"  likely cause: {CAUSES[quantity]}")


def require_finite(quantity: str, values: Tensor, step: int,
                   reduce_sum: Callable[[Tensor], Tensor] = lambda t: t) -> None:
    """Raise :class:`TrainingDiverged` when ``values`` holds a NaN or an infinity on any process.

    ``reduce_sum`` sums the counts over processes, so that every rank stops together (a rank that stopped
    alone would leave the others waiting in their next collective).
    """
    values = values.detach()
    counts = torch.stack([torch.isnan(values).sum(), torch.isinf(values).sum(),
                          torch.tensor(values.numel(), device=values.device)]).float()
    nan, inf, total = (int(c) for c in reduce_sum(counts).tolist())
    if nan or inf:
        raise TrainingDiverged(quantity, step, f"{nan} NaN and {inf} infinite of {total} values")


def gradient_norm(parameters: Iterable[Tensor]) -> Optional[Tensor]:
    """The global L2 norm of the parameters' gradients (``None`` when none has one); a ``DTensor`` norm
    (FSDP2 shards) is reduced to the full one."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return None
    norm = torch.nn.utils.get_total_norm(grads)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
