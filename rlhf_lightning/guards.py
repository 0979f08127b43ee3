"""Finiteness guards: a non-finite reward, loss or gradient stops the run before it reaches the weights.

Each check runs before the update it would poison (rewards before the objective sees them, the loss before
its backward, the gradient norm before the optimizer step), so the weights, and every checkpoint and export
written from them, stay finite: the last checkpoint before the stop is a good one to resume from.
"""

from __future__ import annotations

import math
import traceback
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Optional

import torch
from torch import Tensor

from rlhf_lightning.errors import RecipeError

CAUSES = {
    "reward": "the reward source (model.init_args.reward) returned it: check the function or reward model",
    "shaped reward": "ln π_t − ln π_ref is not finite (a policy or reference forward overflowed), or the reward "
                     "is out of range: check rollout.init_args.kl_coef and the reward's scale",
    "loss": "check the objective's coefficients, the rewards' scale and model.init_args.lr",
    "evaluation score": "the evaluation judge (WinRateEvaluation's judge, or model.init_args.reward) returned it, or "
                        "the policy's KL to the reference overflowed",
    "gradient norm": "the update overflowed: lower model.init_args.lr, keep max_grad_norm set, check the rewards' "
                     "scale (or use bf16-mixed instead of 16-mixed)",
}


NOT_UPDATES = ("evaluation score",)  # checked after the update, not before one


class TrainingStopped(RuntimeError):
    """A guard stopped the run (the CLI prints the message alone and exits with ``exit_code``)."""

    exit_code = 3


class TrainingInterrupted(TrainingStopped):
    """SIGTERM or Ctrl-C (SIGINT) stopped the run: exit code 128 + the signal's number, as a shell reports it."""

    def __init__(self, signal_name: str, signal_number: int, step: int) -> None:
        self.exit_code = 128 + signal_number
        super().__init__(f"received {signal_name} at rollout batch {step}; the last checkpoint written is the newest "
                         "state kept\n  fix: resume with --ckpt_path last")


class TrainingDiverged(TrainingStopped):
    """A quantity of the update is NaN or infinite: the run stops before the weights change."""

    def __init__(self, quantity: str, step: int, detail: str) -> None:
        self.quantity, self.step = quantity, step
        kept = ("the evaluation was not recorded" if quantity in NOT_UPDATES else
                "the weights were not updated with it, and the last checkpoint written is from before this batch")
        super().__init__(f"{quantity} is not finite at rollout batch {step} ({detail}); {kept}\n"
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


def check_loss_value(loss: object, objective: str) -> None:
    """An objective's loss must be a scalar tensor that depends on the trainable weights (a user's objective
    that returns a float, a per-token tensor or a detached value would otherwise fail inside backward, or
    train nothing)."""
    field = "model.init_args.objective"
    if not isinstance(loss, Tensor):
        raise RecipeError(field, f"{objective}.loss returned {type(loss).__name__}, not a tensor",
                          "return (loss, metrics) with loss a 0-dim tensor computed from the log-probs")
    if loss.dim() != 0:
        raise RecipeError(field, f"{objective}.loss returned a loss of shape {list(loss.shape)}, not a scalar",
                          "reduce it to one number (e.g. masked mean over tokens, then mean over rows)")
    if not loss.requires_grad:
        raise RecipeError(field, f"{objective}.loss returned a loss that does not depend on the policy's weights "
                                 "(no gradient flows from it)",
                          "compute it from the logprobs argument without .detach() or .item()")


def clip_gradient_norm(parameters: Iterable[Tensor], max_norm: Optional[float]) -> Optional[Tensor]:
    """The global L2 norm of the parameters' gradients, computed once, clipping them to ``max_norm`` when it is
    set (``torch.nn.utils.clip_grad_norm_``); ``None`` when no parameter has a gradient. A ``DTensor`` norm
    (FSDP2 shards) is reduced to the full one."""
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return None
    if max_norm:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


@dataclass
class DivergenceLimits:
    """Limits on divergence that stays finite, checked on every rollout batch (``model.init_args.divergence``).

    Args:
        max_kl: the mean ``KL(π_t ‖ π_ref)`` of a response, in nats, above which the policy has run away from
            the reference (``null``: no limit).
        uniform_entropy: the share of ``ln |V|`` (the entropy of the uniform distribution) at which the policy's
            mean token entropy counts as collapsed to noise, when it started below it (``null``: no limit).
        patience: consecutive rollout batches beyond a limit before acting.
        zero_gradient_steps: consecutive optimizer steps whose gradient norm is exactly 0 (the update changes
            nothing: every reward tied, or the gradients vanished) before acting (``null``: no limit).
        action: ``stop`` (one message naming the batch and the quantity, exit code 3) or ``warn``.
    """

    max_kl: Optional[float] = 100.0
    uniform_entropy: Optional[float] = 0.95
    patience: int = 2
    zero_gradient_steps: Optional[int] = 16
    action: Literal["stop", "warn"] = "stop"

    def problems(self, field: str = "model.init_args.divergence") -> list[RecipeError]:
        checks = [("max_kl", self.max_kl is None or (math.isfinite(self.max_kl) and self.max_kl > 0),
                   f"must be > 0 and finite, or null, got {self.max_kl}"),
                  ("uniform_entropy", self.uniform_entropy is None or 0 < self.uniform_entropy <= 1,
                   f"must be in (0, 1] or null, got {self.uniform_entropy}"),
                  ("patience", self.patience >= 1, f"must be ≥ 1, got {self.patience}"),
                  ("zero_gradient_steps", self.zero_gradient_steps is None or self.zero_gradient_steps >= 1,
                   f"must be ≥ 1 or null, got {self.zero_gradient_steps}")]
        return [RecipeError(f"{field}.{key}", problem) for key, ok, problem in checks if not ok]


class DivergenceMonitor:
    """Counts consecutive rollout batches beyond the :class:`DivergenceLimits` and acts on ``patience``."""

    def __init__(self, limits: DivergenceLimits) -> None:
        self.limits = limits
        self.streak: dict[str, int] = {}
        self.first_entropy: Optional[float] = None
        self.zero_gradient_streak = 0

    def observe_gradient(self, step: int, norm: Optional[float]) -> None:
        """Count optimizer steps in a row whose gradient norm is 0 (``None``: no parameter got a gradient)."""
        limit = self.limits.zero_gradient_steps
        self.zero_gradient_streak = self.zero_gradient_streak + 1 if not norm else 0
        if limit is not None and self.zero_gradient_streak == limit:
            self._act(f"training stalled at rollout batch {step}: the gradient norm was 0 for {limit} optimizer "
                      "steps in a row, so the updates changed nothing\n  likely cause: every reward of a batch is "
                      "the same (a constant or saturated reward source), or the loss does not depend on the "
                      "trainable weights; limit: model.init_args.divergence.zero_gradient_steps")

    def observe(self, step: int, kl: float, entropy: Optional[float], vocab_size: int) -> None:
        limits, beyond = self.limits, {}
        if limits.max_kl is not None:
            beyond["KL to the reference"] = (kl > limits.max_kl, f"{kl:.3g} nats per response > max_kl {limits.max_kl}")
        if limits.uniform_entropy is not None and entropy is not None and vocab_size > 1:
            ceiling = limits.uniform_entropy * math.log(vocab_size)
            self.first_entropy = entropy if self.first_entropy is None else self.first_entropy
            beyond["token entropy"] = (self.first_entropy < ceiling <= entropy,
                                       f"{entropy:.3g} nats ≥ {limits.uniform_entropy} × ln |V| = {ceiling:.3g}: the "
                                       "policy samples nearly uniformly")
        for name, (over, detail) in beyond.items():
            self.streak[name] = self.streak.get(name, 0) + 1 if over else 0
            if self.streak[name] == limits.patience:
                message = (f"the policy diverged at rollout batch {step}: {name} {detail} for {limits.patience} "
                           "batches in a row; the checkpoints of those batches hold the diverging policy\n"
                           "  likely cause: model.init_args.lr too high, or a reward the policy can game; "
                           "limits: model.init_args.divergence")
                self._act(message)

    def _act(self, message: str) -> None:
        if self.limits.action == "stop":
            raise PolicyDiverged(message)
        warnings.warn(message, stacklevel=3)


class PolicyDiverged(TrainingStopped):
    """The policy ran beyond a :class:`DivergenceLimits` limit (finite, but no longer a useful policy)."""


class RewardFailed(TrainingStopped):
    """The user's reward code raised: the run stops before the batch it was scoring trains anything."""

    def __init__(self, source: str, error: BaseException) -> None:
        frames = traceback.extract_tb(error.__traceback__)
        where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
        super().__init__(f"the reward function '{source}' raised {type(error).__name__}: {error}{where}; the weights "
                         "were not updated with this batch, and the last checkpoint written is from before it\n"
                         "  fix: make the function return one number per response for any input (resume with "
                         "--ckpt_path last once it does)")
