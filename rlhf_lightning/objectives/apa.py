"""APA: Advantage-Induced Policy Alignment (Zhu, Sharma, Frujeri, Dong, Zhu, Jordan and Jiao, 2023)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from rlhf_lightning.advantages import ReduceSum, add_critic_advantages
from rlhf_lightning.errors import RecipeError
from rlhf_lightning.logprobs import masked_mean
from rlhf_lightning.objectives.base import Needs, Objective, flag_problems, number_problems
from rlhf_lightning.policy_loss import clipped_value_loss, value_metrics
from rlhf_lightning.rollout import Rollout


class APA(Objective):
    """Squared-error regression of the log-ratio to the initial policy onto the scaled advantage, with a critic.

    Zhu et al. (2023), "Fine-Tuning Language Models with Advantage-Induced Policy Alignment"
    (arXiv:2306.02231); the APA baseline of the REBEL paper's chat experiment (Starling-LM-7B-alpha).
    The KL-regularised optimum of one policy step is ``π*(a|s) ∝ π_init(a|s)·exp(Â(s, a)/λ)``; APA fits
    ``ln π_θ`` to ``ln π*`` by least squares on the tokens sampled from ``π_t``, taking the normaliser
    ``Z(s) ≈ 1`` as the paper does. Once per rollout batch (``prepare``, no grad), exactly as
    :class:`~rlhf_lightning.objectives.PPO` (the shared :func:`~rlhf_lightning.advantages.critic_advantages`)::

        r_i = −β·(ln π_t(y_i|x, y_<i) − ln π_ref(y_i|x, y_<i))  (+ r(x, y) on the last response token)
        δ_i = r_i + γ·V_t(i+1) − V_t(i),   Â_i = δ_i + γλ_GAE·Â_{i+1},   R_i = Â_i + V_t(i)
        Â ← (Â − mean Â) / std Â                                  (optional whitening, over all processes)

    then for each minibatch of the ``inner_epochs`` passes::

        L_APA   = mean_i ( ln π_θ(y_i|x, y_<i) − ln π_init(y_i|x, y_<i) − Â_i/λ )²
        L_value = mean_i ½·(V_θ(i) − R_i)²            (PPO's clipped form when value_clip is set)
        L       = L_APA + c_v·L_value

    means running over the real response tokens of the minibatch; ``∂L_APA/∂ln π_θ(y_i) =
    2·(ln π_θ − ln π_init − Â_i/λ)/n`` with ``n`` the number of those tokens.

    Choices, checked against the paper and its code (github.com/microsoft/RLHF-APA,
    ``trlx/models/modeling_sppo.py``, loss ``"square"``, and ``trlx/trainer/accelerate_sppo_trainer.py``):

    - **Reference.** ``π_init`` is the initial (SFT) policy, the frozen reference model of the run
      (``ln π_ref`` of the rollout), not the sampling policy ``π_t``: the paper's target is
      ``π_init·exp(Â/λ)``, and its code passes the reference model's log-probs as the loss's
      ``old_logprobs``. The anchor to ``π_init`` is APA's KL control; λ sets how far the policy may move.
    - **Sign.** The target is ``ln π_init + Â/λ``: the loss raises ``ln π_θ`` of tokens with ``Â > 0``.
      λ is the paper's "advantage coefficient" ``λ``, the code's ``1/adv_coeff_sq`` (it multiplies
      ``Â`` by ``adv_coeff_sq = 10`` in its TL;DR and HH scripts, hence the default λ = 0.1).
    - **KL in the reward.** The paper's code zeroes the per-token KL penalty of the reward (only
      ``r(x, y)`` on the last token), the loss's anchor to ``π_init`` regularising instead. Here the
      token rewards are PPO's, shaped by the Rollout callback's ``kl_coef`` β; ``kl_coef: 0`` reproduces
      the paper's code (``recipes/apa.yaml`` does so).
    - **Advantages.** GAE from the critic, as PPO, whitened by default (the code's
      ``get_advantages_and_returns`` whitens) — λ is then in units of the advantages' standard deviation.
      Here the statistics are those of the whole rollout batch over all processes (the code whitens each
      minibatch). ``Â`` is not clipped, nor is the log-ratio (the code computes a clipped log-ratio but the
      ``"square"`` loss does not use it), and there is no importance ratio.
    - **Value loss.** ``½·mean (V_θ − R)²`` without clipping by default (the code's value clip is commented
      out and its configs set the clip range to 100) and weight ``vf_coef = 1`` (its configs);
      ``value_clip`` restores PPO's clipped value loss.
    - **Averaging.** Squared errors are averaged over all real response tokens of the minibatch (the code's
      ``sum(·mask)/mask.sum()``), not per response first; micro-batches are weighted by their token share.
    - **Schedule.** 2 inner epochs, γ = 1, λ_GAE = 0.95 (the code's configs).
    - **Names.** ``lam`` is APA's λ, as in the paper; the GAE trace parameter, PPO's ``lam``, is ``gae_lambda``.

    Args:
        lam: λ, the advantage temperature: the target log-ratio to ``π_init`` is ``Â/λ`` (smaller λ, larger
            steps away from ``π_init``).
        vf_coef: c_v, weight of the value loss.
        value_clip: ε_v, PPO's value clip range around the rollout-time values (``null``: no clipping, as
            the paper's code).
        gamma: γ, the discount over response tokens.
        gae_lambda: λ_GAE, the GAE trace parameter.
        whiten_advantages: normalise advantages to zero mean and unit variance over the rollout batch
            (statistics over all processes).
        inner_epochs: passes over each rollout batch with ``π_t`` fixed.
        num_minibatches: optimizer steps per pass.
    """

    needs = Needs(critic=True)

    def __init__(self, lam: float = 0.1, vf_coef: float = 1.0, value_clip: Optional[float] = None,
                 gamma: float = 1.0, gae_lambda: float = 0.95, whiten_advantages: bool = True,
                 inner_epochs: int = 2, num_minibatches: int = 1) -> None:
        errors: list[RecipeError] = []
        errors += number_problems("lam", lam, lambda v: v > 0, "a number > 0", "the paper's code uses 0.1")
        errors += number_problems("vf_coef", vf_coef, lambda v: v >= 0, "≥ 0", "the paper's code uses 1.0")
        if value_clip is not None:
            errors += number_problems("value_clip", value_clip, lambda v: v > 0,
                                      "> 0 or null (no value clipping)", "null, as the paper's code, or e.g. 0.2")
        errors += number_problems("gamma", gamma, lambda v: 0 <= v <= 1, "in [0, 1]", "the paper's code uses 1.0")
        errors += number_problems("gae_lambda", gae_lambda, lambda v: 0 <= v <= 1, "in [0, 1]",
                                  "the paper's code uses 0.95")
        errors += flag_problems(whiten_advantages=whiten_advantages)
        super().__init__(inner_epochs=inner_epochs, num_minibatches=num_minibatches, problems=errors)
        self.lam, self.vf_coef, self.value_clip = lam, vf_coef, value_clip
        self.gamma, self.gae_lambda, self.whiten_advantages = gamma, gae_lambda, whiten_advantages

    def prepare(self, rollout: Rollout, reduce_sum: ReduceSum) -> Rollout:
        if rollout.ref_logprobs is None:
            raise ValueError("APA needs the initial policy's log-probs (rollout.ref_logprobs): declare "
                             "Needs(reference=True)")
        return add_critic_advantages(rollout, "apa", self.gamma, self.gae_lambda, self.whiten_advantages, reduce_sum)

    def chunk_weight(self, chunk, whole) -> float:
        """The loss is a mean over response tokens: weight micro-batches by their share of tokens."""
        return float(chunk.response_mask.sum() / whole.response_mask.sum().clamp(min=1))

    def loss(self, logprobs: Tensor, rollout: Rollout,
             values: Optional[Tensor] = None) -> tuple[Tensor, dict[str, Tensor]]:
        if values is None:
            raise ValueError("APA.loss needs the critic's current values (values=[N, R])")
        if "advantages" not in rollout.extras:
            raise RuntimeError("APA.loss needs the advantages that APA.prepare(rollout, reduce_sum) puts in "
                               "rollout.extras; call prepare once per rollout batch first (RLHFModule does)")
        mask = rollout.response_mask  # [N, R]
        real = mask.bool()
        # padding may hold anything: zero it so that the squared errors stay finite there
        logprobs = torch.where(real, logprobs, 0.0)
        init_logprobs = torch.where(real, rollout.ref_logprobs, 0.0)
        values = torch.where(real, values, 0.0)
        old_values = torch.where(real, rollout.values, 0.0)
        advantages = torch.where(real, rollout.extras["advantages"].detach(), 0.0)  # [N, R]
        returns = torch.where(real, rollout.extras["returns"].detach(), 0.0)  # [N, R]

        log_ratio = logprobs - init_logprobs  # ln π_θ − ln π_init, [N, R]
        target = advantages / self.lam  # Â/λ
        apa_loss = masked_mean((log_ratio - target).pow(2), mask)
        value_loss, value_clipped = clipped_value_loss(values, old_values, returns, mask, self.value_clip)
        loss = apa_loss + self.vf_coef * value_loss

        with torch.no_grad():
            metrics = {
                "loss/total": loss.detach(),
                "loss/apa": apa_loss.detach(),
                "loss/value": value_loss.detach(),
                "apa/log_ratio": masked_mean(log_ratio, mask).detach(),
                "apa/target": masked_mean(target.abs(), mask),
                **value_metrics(values, returns, mask, value_clipped),
            }
        return loss, metrics
