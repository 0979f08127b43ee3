"""PPO: clipped policy optimisation with a learned critic and GAE (Schulman et al., 2017), as used for RLHF."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional

import torch
from torch import Tensor

from rlhf_lightning.advantages import ReduceSum, add_critic_advantages
from rlhf_lightning.errors import RecipeError
from rlhf_lightning.logprobs import kl_per_token, masked_mean
from rlhf_lightning.objectives.base import Needs, Objective
from rlhf_lightning.policy_loss import clipped_surrogate, clipped_value_loss, reduce_tokens, value_metrics
from rlhf_lightning.rollout import Rollout


class PPO(Objective):
    """Proximal Policy Optimisation on per-token KL-shaped rewards, with a clipped value loss.

    Schulman et al. (2017), "Proximal Policy Optimization Algorithms"; the RLHF form of Ziegler et
    al. (2019), Stiennon et al. (2020) and Ouyang et al. (2022, InstructGPT). Once per rollout batch
    (``prepare``, no grad), with ``π_t`` the policy that sampled it and ``V_t`` the critic then::

        r_i = −β·(ln π_t(y_i|x, y_<i) − ln π_ref(y_i|x, y_<i))  (+ r(x, y) on the last response token)
        δ_i = r_i + γ·V_t(i+1) − V_t(i)                         (V after the last token = 0)
        Â_i = δ_i + γλ·Â_{i+1},    R_i = Â_i + V_t(i)            (GAE, Schulman et al., 2016)
        Â ← (Â − mean Â) / std Â                                  (optional whitening, over all processes)

    then for each minibatch of the ``inner_epochs`` passes, with ``ρ_i = π_θ(y_i|·)/π_t(y_i|·)``::

        L_policy  = mean_i max(−Â_i·ρ_i, −Â_i·clip(ρ_i, 1 − ε, 1 + ε))
        V_clip    = V_t + clip(V_θ − V_t, −ε_v, ε_v)
        L_value   = mean_i ½·max((V_θ(i) − R_i)², (V_clip(i) − R_i)²)
        L         = L_policy + c_v·L_value − c_H·mean_i H(π_θ(·|x, y_<i)) + c_ptx·L_ptx

    means running over the real response tokens of the minibatch. ``L_ptx`` is InstructGPT's
    "PPO-ptx" pretraining mix: the policy's token cross-entropy on a batch of pretraining / SFT text
    that the data module attaches to each training batch (``data.init_args.pretrain_file``); the
    module adds ``ptx_coef × L_ptx`` (one LM batch per minibatch) and logs ``loss/ptx``.

    Paper settings (REBEL paper, seed 001, Appendix F.1.5, TL;DR): batch 512, lr 3e-6 linear,
    4 inner epochs, γ = 1, λ = 0.95, ε = 0.2, value-function coefficient 0.1, KL coefficient
    β = 0.05 (set on the Rollout callback, ``kl_coef``; ``target_kl`` makes it adaptive). The critic
    is ``model.init_args.critic`` (by default the reward model, with its scalar head).

    Args:
        clip_ratio: ε, the policy-ratio clip range ``[1 − ε, 1 + ε]``.
        value_clip: ε_v, how far the critic's value may move from its rollout-time value before the
            clipped value loss takes over (``null`` disables value clipping).
        vf_coef: c_v, weight of the value loss.
        gamma: γ, the discount over response tokens.
        lam: λ, the GAE trace parameter.
        whiten_advantages: normalise advantages to zero mean and unit variance over the rollout
            batch (statistics over all processes).
        entropy_coef: c_H, weight of the entropy bonus (0 = off; the policy's entropy is then not computed).
        ptx_coef: c_ptx, weight of the pretraining LM loss (0 = off; InstructGPT's PPO-ptx uses > 0
            and needs ``data.init_args.pretrain_file``).
        inner_epochs: passes over each rollout batch with ``π_t`` fixed.
        num_minibatches: optimizer steps per pass.
    """

    needs = Needs(critic=True)

    def __init__(self, clip_ratio: float = 0.2, value_clip: Optional[float] = 0.2, vf_coef: float = 0.1,
                 gamma: float = 1.0, lam: float = 0.95, whiten_advantages: bool = True, entropy_coef: float = 0.0,
                 ptx_coef: float = 0.0, inner_epochs: int = 4, num_minibatches: int = 1) -> None:
        errors: list[RecipeError] = []
        if not (math.isfinite(clip_ratio) and clip_ratio > 0):
            errors.append(self.field_error("clip_ratio", f"must be > 0, got {clip_ratio}", "the paper uses 0.2"))
        if value_clip is not None and not value_clip > 0:
            errors.append(self.field_error("value_clip", f"must be > 0 or null (no value clipping), got {value_clip}",
                                           "the paper uses 0.2"))
        if not (math.isfinite(vf_coef) and vf_coef >= 0):
            errors.append(self.field_error("vf_coef", f"must be ≥ 0, got {vf_coef}", "the paper uses 0.1"))
        if not 0 <= gamma <= 1:
            errors.append(self.field_error("gamma", f"must be in [0, 1], got {gamma}", "the paper uses 1.0"))
        if not 0 <= lam <= 1:
            errors.append(self.field_error("lam", f"must be in [0, 1], got {lam}", "the paper uses 0.95"))
        if not (math.isfinite(entropy_coef) and entropy_coef >= 0):
            errors.append(self.field_error("entropy_coef", f"must be ≥ 0, got {entropy_coef}", "e.g. 0.0 or 0.01"))
        if not (math.isfinite(ptx_coef) and ptx_coef >= 0):
            errors.append(self.field_error("ptx_coef", f"must be ≥ 0, got {ptx_coef}",
                                           "0 disables the pretraining mix"))
        super().__init__(inner_epochs=inner_epochs, num_minibatches=num_minibatches, problems=errors)
        self.clip_ratio, self.value_clip, self.vf_coef = clip_ratio, value_clip, vf_coef
        self.gamma, self.lam, self.whiten_advantages = gamma, lam, whiten_advantages
        self.entropy_coef, self.ptx_coef = entropy_coef, ptx_coef
        # the module computes the policy's entropy only when it is used, and adds the LM loss only when weighted
        self.needs = replace(self.needs, entropy=entropy_coef > 0, pretrain_coef=ptx_coef)

    def prepare(self, rollout: Rollout, reduce_sum: ReduceSum) -> Rollout:
        return add_critic_advantages(rollout, "ppo", self.gamma, self.lam, self.whiten_advantages, reduce_sum)

    def chunk_weight(self, chunk, whole) -> float:
        """The loss is a mean over response tokens: weight micro-batches by their share of tokens."""
        return float(chunk.response_mask.sum() / whole.response_mask.sum().clamp(min=1))

    def loss(self, logprobs: Tensor, rollout: Rollout, values: Optional[Tensor] = None,
             entropy: Optional[Tensor] = None) -> tuple[Tensor, dict[str, Tensor]]:
        if values is None:
            raise ValueError("PPO.loss needs the critic's current values (values=[N, R])")
        mask = rollout.response_mask  # [N, R]
        real = mask.bool()
        # padding may hold anything: zero it so that exp(ln π_θ − ln π_t) and (V − R)² stay finite there
        logprobs = torch.where(real, logprobs, 0.0)
        old_logprobs = torch.where(real, rollout.old_logprobs, 0.0)
        values = torch.where(real, values, 0.0)
        old_values = torch.where(real, rollout.values, 0.0)
        advantages = rollout.extras["advantages"]  # [N, R]
        returns = rollout.extras["returns"]  # [N, R]

        per_token, ratio, clipped = clipped_surrogate(logprobs, old_logprobs, advantages, self.clip_ratio)  # [N, R]
        policy_loss = reduce_tokens(per_token, mask, "token_mean")

        value_loss, value_clipped = clipped_value_loss(values, old_values, returns, mask, self.value_clip)

        loss = policy_loss + self.vf_coef * value_loss
        metrics = {
            "loss/policy": policy_loss.detach(),
            "loss/value": value_loss.detach(),
        }
        if entropy is not None:
            mean_entropy = masked_mean(torch.where(real, entropy, 0.0), mask)
            if self.entropy_coef > 0:
                loss = loss - self.entropy_coef * mean_entropy
            metrics["loss/entropy"] = mean_entropy.detach()
        elif self.entropy_coef > 0:
            raise ValueError("PPO with entropy_coef > 0 needs the policy's entropy (entropy=[N, R])")

        with torch.no_grad():
            metrics.update({
                "loss/total": loss.detach(),
                "ppo/clip_fraction": masked_mean(clipped.float(), mask),
                "ppo/approx_kl": masked_mean(kl_per_token(old_logprobs, logprobs, "k3"), mask),  # KL(π_t‖π_θ), k3
                "ppo/ratio": masked_mean(ratio, mask),
                **value_metrics(values, returns, mask, value_clipped),
            })
        return loss, metrics
