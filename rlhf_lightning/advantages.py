"""Shared advantage maths: per-token KL-shaped rewards, GAE, group baselines, whitening.

Shapes: ``N`` rows (``num_prompts · group_size``, groups consecutive), ``R`` response tokens;
``mask`` is the ``[N, R]`` response mask (a prefix of ones per row).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

ReduceSum = Callable[[Tensor], Tensor]


def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last real token of each row, ``[N]`` (0 for an empty row)."""
    return (mask.sum(-1).long() - 1).clamp(min=0)


def per_token_rewards(score: Tensor, old_logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor,
                      kl_coef: float) -> Tensor:
    """PPO's token rewards ``r_i = −β·(ln π_t(y_i) − ln π_ref(y_i))``, plus ``r(x, y)`` on the last token. ``[N, R]``."""
    rewards = -kl_coef * (old_logprobs - ref_logprobs) * mask
    last = last_token_index(mask)
    rows = torch.arange(score.shape[0], device=score.device)
    rewards[rows, last] += score
    return rewards


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over response tokens (Schulman et al., 2016).

    ``δ_i = r_i + γ·V_{i+1} − V_i`` (``V`` after the last real token is 0),
    ``Â_i = δ_i + γλ·Â_{i+1}``; returns ``(advantages, returns = Â + V)``, both ``[N, R]``, zero on padding.
    """
    values = values * mask
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for i in reversed(range(rewards.shape[1])):
        delta = rewards[:, i] + gamma * next_value - values[:, i]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, i]
        advantages[:, i] = next_advantage
        next_value = values[:, i]
    return advantages, (advantages + values) * mask


def masked_whiten(values: Tensor, mask: Tensor, reduce_sum: Optional[ReduceSum] = None, shift_mean: bool = True,
                  eps: float = 1e-8) -> Tensor:
    """``(x − mean)/std`` over the masked elements of every process (``reduce_sum`` sums across them).

    With ``shift_mean=False`` the mean is added back (only the scale changes).
    """
    reduce_sum = reduce_sum or (lambda t: t)
    stats = reduce_sum(torch.stack([(values * mask).sum(), (values.pow(2) * mask).sum(), mask.sum()]).float())
    count = stats[2].clamp(min=1)
    mean = stats[0] / count
    variance = (stats[1] / count - mean.pow(2)).clamp(min=0)
    if count > 1:
        variance = variance * count / (count - 1)  # unbiased, as torch.var
    whitened = (values - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def leave_one_out_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """RLOO: ``A_i = r_i − (1/(k−1))·Σ_{j≠i} r_j`` within each group of ``k`` rows. ``[N]``."""
    if group_size < 2:
        raise ValueError(f"a leave-one-out baseline needs at least 2 samples per prompt, got {group_size}")
    grouped = rewards.view(-1, group_size)
    baseline = (grouped.sum(-1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).reshape(-1)


def group_normalized_advantages(rewards: Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> Tensor:
    """GRPO: ``A_i = (r_i − mean(r)) / (std(r) + ε)`` within each group; ``scale=False`` drops the std (Dr. GRPO). ``[N]``."""
    grouped = rewards.view(-1, group_size)
    centred = grouped - grouped.mean(-1, keepdim=True)
    if scale:
        std = grouped.std(-1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped[:, :1])
        centred = centred / (std + eps)
    return centred.reshape(-1)


def critic_advantages(score: Tensor, old_logprobs: Tensor, ref_logprobs: Tensor, values: Tensor, mask: Tensor,
                      kl_coef: float, gamma: float, lam: float, whiten: bool,
                      reduce_sum: ReduceSum) -> tuple[Tensor, Tensor, dict[str, float]]:
    """The actor-critic advantages of PPO and APA, once per rollout batch (no grad).

    Token rewards :func:`per_token_rewards` (``β = kl_coef``), then :func:`gae` against the rollout-time
    critic ``values``; with ``whiten`` the advantages are whitened over the real tokens of every process.
    Returns ``(advantages, returns, stats)``, the tensors ``[N, R]`` and zero on padding; ``stats`` holds
    the global ``return_mean``, ``advantage_mean`` and ``advantage_std`` (unbiased) of the raw advantages.
    """
    token_rewards = per_token_rewards(score, old_logprobs, ref_logprobs, mask, kl_coef)  # [N, R]
    advantages, returns = gae(token_rewards, values, mask, gamma, lam)  # [N, R] each
    # global statistics (all processes) of the raw advantages and returns, for the logs
    sums = reduce_sum(torch.stack([mask.sum(), (advantages * mask).sum(), (advantages.pow(2) * mask).sum(),
                                   (returns * mask).sum()]).float())
    count = sums[0].clamp(min=1)
    advantage_mean = sums[1] / count
    advantage_variance = (sums[2] / count - advantage_mean.pow(2)).clamp(min=0)
    advantage_std = (advantage_variance * count / (count - 1).clamp(min=1)).sqrt()  # unbiased, as masked_whiten
    if whiten:
        advantages = masked_whiten(advantages, mask, reduce_sum)
    stats = {"return_mean": float(sums[3] / count), "advantage_mean": float(advantage_mean),
             "advantage_std": float(advantage_std)}
    return advantages, returns, stats


def add_critic_advantages(rollout, objective: str, gamma: float, lam: float, whiten: bool,
                          reduce_sum: ReduceSum):
    """``prepare`` of the actor-critic objectives (PPO, APA): :func:`critic_advantages` of a rollout into
    ``rollout.extras["advantages"]`` / ``["returns"]``, their statistics logged as ``<objective>/return_mean``,
    ``/advantage_mean`` and ``/advantage_std``. Returns the rollout."""
    name = objective.upper()
    if rollout.values is None:
        raise ValueError(f"{name} needs the critic's values at rollout time (rollout.values); the Rollout callback "
                         "records them when the objective declares Needs(critic=True)")
    if rollout.ref_logprobs is None and rollout.kl_coef:
        raise ValueError(f"{name} needs the reference log-probs (rollout.ref_logprobs): declare Needs(reference=True)")
    advantages, returns, stats = critic_advantages(
        rollout.rewards, rollout.old_logprobs, rollout.ref_logprobs, rollout.values, rollout.response_mask,
        rollout.kl_coef, gamma, lam, whiten, reduce_sum)  # [N, R] each
    rollout.extras["advantages"] = advantages
    rollout.extras["returns"] = returns
    rollout.metrics.update({f"{objective}/return_mean": stats["return_mean"],
                            f"{objective}/advantage_mean": stats["advantage_mean"],
                            f"{objective}/advantage_std": stats["advantage_std"]})
    return rollout
