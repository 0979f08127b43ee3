"""``Rollout``: generate responses for each batch of prompts, score them and hand them to the objective."""

from __future__ import annotations

import time
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from rlhf_lightning.errors import RecipeError
from rlhf_lightning.rollout import Rollout as RolloutBatch


def response_attention_mask(responses: Tensor, eos_token_id: int, pad_token_id: int) -> tuple[Tensor, Tensor]:
    """Mask of real response tokens (up to and including the first EOS) and whether each row has EOS.

    ``responses`` is ``[N, R]``; the mask is a prefix: tokens after the first EOS are masked out, and
    so is everything from the first pad token on (a pad the model sampled ends the response, which
    then counts as having no EOS if the pad comes first).
    """
    is_eos = (responses == eos_token_id).long()
    ended = is_eos.cumsum(-1) - is_eos > 0  # strictly after the first EOS
    if pad_token_id != eos_token_id:
        ended |= (responses == pad_token_id).long().cumsum(-1) > 0  # from the first pad token on
    is_eos = is_eos.bool() & ~ended
    has_eos = is_eos.any(-1)
    mask = ~ended
    return mask.long(), has_eos


class Rollout(Callback):
    """Generate responses for each batch of prompts, score and KL-shape them for the objective.

    For each prompt it samples ``objective.samples_per_prompt`` responses from the current policy
    ``π_t`` (and appends ``objective.dataset_responses_per_prompt`` reference responses from the data
    set, for hybrid pairs), records ``ln π_t`` and ``ln π_ref`` per token (and the critic's values when
    the objective has one), computes the raw reward (responses without EOS get ``no_eos_reward``) and
    the shaped reward ``r̃ = r − γ·(ln π_t(y|x) − ln π_ref(y|x))``, and stores the result in
    ``batch["rollout"]`` for ``RLHFModule.training_step``. When the module's update is a single forward
    over exactly these rows before any parameter change (``RLHFModule.old_logprobs_from_update``),
    ``ln π_t`` and the shaping are left to that forward, which gives the same numbers one pass cheaper.

    With ``target_kl`` set, γ follows the adaptive controller of Ziegler et al. (2019):
    ``γ ← γ·(1 + clip(KL/target − 1, −0.2, 0.2)·n/horizon)`` after each batch of ``n`` samples.

    Args:
        max_new_tokens: response length limit.
        min_new_tokens: force at least this many tokens (the TL;DR runs used 53).
        temperature: sampling temperature; log-probs are taken from ``logits / temperature``.
        top_p: nucleus sampling threshold (1.0 = off).
        top_k: top-k sampling (0 = off).
        kl_coef: γ (β for PPO), the weight of the KL penalty in the shaped reward.
        target_kl: KL per sequence the adaptive controller aims for (``null`` = fixed γ).
        kl_horizon: the controller's horizon, in samples.
        no_eos_reward: reward given to responses that hit ``max_new_tokens`` without EOS
            (``null`` keeps the reward source's score).
    """

    def __init__(self, max_new_tokens: int = 53, min_new_tokens: int = 0, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, kl_coef: float = 0.05, target_kl: Optional[float] = None,
                 kl_horizon: int = 10000, no_eos_reward: Optional[float] = -4.0) -> None:
        errors = []
        if max_new_tokens < 1:
            errors.append(("max_new_tokens", f"must be ≥ 1, got {max_new_tokens}"))
        if not temperature > 0:
            errors.append(("temperature", f"must be > 0 for sampling, got {temperature}"))
        if not 0 < top_p <= 1:
            errors.append(("top_p", f"must be in (0, 1], got {top_p}"))
        if kl_coef < 0:
            errors.append(("kl_coef", f"must be ≥ 0, got {kl_coef}"))
        if target_kl is not None and not target_kl > 0:
            errors.append(("target_kl", f"must be > 0 or null, got {target_kl}"))
        if kl_horizon < 1:
            errors.append(("kl_horizon", f"must be ≥ 1, got {kl_horizon}"))
        if errors:
            key, problem = errors[0]
            raise RecipeError(f"trainer.callbacks[Rollout].init_args.{key}",
                              "; ".join(f"{k} {p}" for k, p in errors))
        self.max_new_tokens = max_new_tokens
        self.min_new_tokens = min_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.kl_coef = kl_coef
        self.target_kl = target_kl
        self.kl_horizon = kl_horizon
        self.no_eos_reward = no_eos_reward

    def generation_kwargs(self) -> dict:
        return dict(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                    max_new_tokens=self.max_new_tokens, min_new_tokens=self.min_new_tokens)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: dict, batch_idx: int) -> None:
        if pl_module.objective.needs_rollout:
            batch["rollout"] = self.collect(pl_module, batch)

    # adaptive KL coefficient: saved in checkpoints so that a resumed run continues with the same γ
    def state_dict(self) -> dict:
        return {"kl_coef": self.kl_coef}

    def load_state_dict(self, state_dict: dict) -> None:
        self.kl_coef = state_dict.get("kl_coef", self.kl_coef)

    def update_kl_coef(self, observed_kl: float, num_samples: int) -> None:
        """One step of the adaptive controller (no-op without ``target_kl``)."""
        if self.target_kl is None:
            return
        error = min(max(observed_kl / self.target_kl - 1.0, -0.2), 0.2)
        self.kl_coef *= 1.0 + error * num_samples / self.kl_horizon

    def _responses(self, pl_module: LightningModule, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        """Prompt ids and mask ``[N, P]`` and the response block ``[N, R]``, in groups of whole prompts.

        Each group holds ``samples_per_prompt`` samples of ``π_t`` followed by
        ``dataset_responses_per_prompt`` copies of the data set's reference response.
        """
        objective = pl_module.objective
        k, offline = objective.samples_per_prompt, getattr(objective, "dataset_responses_per_prompt", 0)
        tokenizer = pl_module.tokenizer
        prompt_ids = batch["input_ids"].repeat_interleave(k, dim=0)  # [B·k, P]
        prompt_mask = batch["attention_mask"].repeat_interleave(k, dim=0)
        responses = pl_module.generate(prompt_ids, prompt_mask, **self.generation_kwargs())  # [B·k, R]
        if not offline:
            return prompt_ids, prompt_mask, responses
        if "reference" not in batch:
            raise RecipeError("data.init_args.reference_column",
                              f"objective {type(objective).__name__} pairs samples with data set responses, "
                              "but the training batches carry none", "set reference_column to the response column")
        dataset = [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                   for text in batch["reference"]]
        width = max(responses.shape[1], max(len(ids) for ids in dataset))
        B = batch["input_ids"].shape[0]
        group = k + offline
        block = torch.full((B * group, width), tokenizer.pad_token_id, dtype=responses.dtype, device=responses.device)
        rows = torch.arange(B * group, device=responses.device).view(B, group)
        block[rows[:, :k].reshape(-1), :responses.shape[1]] = responses
        for i, ids in enumerate(dataset):
            block[rows[i, k:], :len(ids)] = torch.tensor(ids, dtype=responses.dtype, device=responses.device)
        return (batch["input_ids"].repeat_interleave(group, dim=0), batch["attention_mask"].repeat_interleave(group, dim=0),
                block)

    @torch.no_grad()
    def collect(self, pl_module: LightningModule, batch: dict) -> RolloutBatch:
        """Generate, score and shape one rollout batch."""
        start = time.perf_counter()
        tokenizer = pl_module.tokenizer
        objective = pl_module.objective
        prompt_ids, prompt_mask, responses = self._responses(pl_module, batch)
        group = prompt_ids.shape[0] // batch["input_ids"].shape[0]
        prompts = [text for text in batch["prompt"] for _ in range(group)]
        response_mask, has_eos = response_attention_mask(responses, tokenizer.eos_token_id, tokenizer.pad_token_id)
        responses = responses.masked_fill(response_mask == 0, tokenizer.pad_token_id)
        input_ids = torch.cat([prompt_ids, responses], dim=1)  # [N, P + R]
        attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
        prompt_length = prompt_ids.shape[1]
        generation_seconds = time.perf_counter() - start

        # ln π_t: from a no-grad pass here, or (when the module's next update is one forward over these
        # very rows with π_θ = π_t) from that update's own forward, which saves this pass
        deferred = pl_module.takes_old_logprobs_from_update(len(input_ids))
        if not deferred:
            old_logprobs, entropy = pl_module.policy_logprobs(input_ids, attention_mask, prompt_length,
                                                              self.temperature, with_entropy=True)
        ref_logprobs = pl_module.reference_logprobs(input_ids, attention_mask, prompt_length, self.temperature)
        values = (pl_module.critic_values(input_ids, attention_mask, prompt_length)
                  if objective.needs_critic else None)

        texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
        rewards = pl_module.reward.score_groups(prompts, texts, group).to(input_ids.device).float()  # [N]
        if self.no_eos_reward is not None:
            rewards = torch.where(has_eos, rewards, torch.full_like(rewards, self.no_eos_reward))
        rollout = RolloutBatch(input_ids=input_ids, attention_mask=attention_mask, prompt_length=prompt_length,
                               old_logprobs=None, ref_logprobs=ref_logprobs, rewards=rewards, shaped_rewards=None,
                               group_size=group, temperature=self.temperature,
                               kl_coef=self.kl_coef if objective.kl_in_reward else 0.0, values=values)
        rollout.metrics = {
            "reward/raw": rewards.mean().item(),
            "gen/length": response_mask.sum(-1).float().mean().item(),
            "gen/eos_share": has_eos.float().mean().item(),
            "time/generation_seconds": generation_seconds,
        }
        if not deferred:
            rollout.attach_policy_logprobs(old_logprobs, entropy)
        rollout.metrics["time/rollout_seconds"] = time.perf_counter() - start
        return rollout

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Adaptive KL: one controller step with this batch's KL to the reference (mean over processes)."""
        rollout = batch.get("rollout") if isinstance(batch, dict) else None
        if self.target_kl is None or rollout is None or "kl/ref" not in rollout.metrics:
            return
        observed = pl_module.reduce_sum(torch.tensor(rollout.metrics["kl/ref"], device=pl_module.device))
        self.update_kl_coef(observed.item() / max(trainer.world_size, 1), len(rollout))
