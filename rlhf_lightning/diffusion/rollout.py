"""Sampled trajectories as the objectives' batches: a trajectory's T denoising steps take the place of a
response's tokens, so ``old_logprobs[i, k]`` is step k's ``ln π_t(x_{k+1} | x_k, c)`` and the sums the objectives
take over a response are the trajectory's log-probability. The objectives do not change: REBEL's Eq. 1 regresses
reward differences onto differences of these sums, the clipped objectives clip the per-step ratios.

The stored trajectory (``extras["latents"]``, ``[N, T + 1, ...]``), its conditioning (``extras["condition"]``) and
the log-probs recorded while sampling (``extras["sampled_logprobs"]``) travel in the batch's ``extras``, so that
minibatches and micro-batches split them with the rows.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from rlhf_lightning.diffusion.ddim import Trajectory
from rlhf_lightning.rollout import Rollout, Samples


def trajectory_samples(trajectory: Trajectory, rewards: Tensor, group_size: int, condition: Any = None,
                       ref_log_probs: Optional[Tensor] = None, kl_coef: float = 0.0,
                       metrics: Optional[dict[str, float]] = None) -> Samples:
    """The :class:`Samples` of ``N = prompts · group_size`` trajectories (rows grouped by prompt, as the text
    path's) scored ``rewards`` (``[N]``); ``ref_log_probs`` (``[N, T]``, the frozen reference's per-step log-probs)
    shapes the reward with ``kl_coef`` as on the text path (default: no reference, so no KL)."""
    log_probs = trajectory.log_probs.detach()
    rows, steps = log_probs.shape
    if rewards.shape != (rows,):
        raise ValueError(f"rewards must have shape [{rows}] (one per trajectory), got {tuple(rewards.shape)}")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards hold NaN or inf: the image reward must return finite scores")
    if rows % group_size:
        raise ValueError(f"{rows} trajectories do not split into groups of {group_size}")
    extras = {"latents": trajectory.latents, "sampled_logprobs": log_probs}
    if isinstance(condition, Tensor):
        extras["condition"] = condition
    device = log_probs.device
    return Samples(input_ids=torch.zeros(rows, steps, dtype=torch.long, device=device),
                   attention_mask=torch.ones(rows, steps, dtype=torch.long, device=device), prompt_length=0,
                   ref_logprobs=log_probs if ref_log_probs is None else ref_log_probs.detach(),
                   rewards=rewards.float(), group_size=group_size, kl_coef=kl_coef, extras=extras,
                   metrics=dict(metrics or {}))


def trajectory_rollout(trajectory: Trajectory, rewards: Tensor, group_size: int,
                       ref_log_probs: Optional[Tensor] = None, kl_coef: float = 0.0) -> Rollout:
    """The :class:`Rollout` the objectives see: :func:`trajectory_samples` with ``ln π_t`` = the recorded log-probs."""
    samples = trajectory_samples(trajectory, rewards, group_size, ref_log_probs=ref_log_probs, kl_coef=kl_coef)
    return samples.with_policy_logprobs(trajectory.log_probs.detach())
