"""``Rollout``: generate responses for each batch of prompts, score them and hand them to the objective."""

from __future__ import annotations

import time
from typing import Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from rlhf_lightning.errors import RecipeError
from rlhf_lightning.logprobs import kl_shaped_reward, masked_mean
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
    """Generate ``objective.samples_per_prompt`` responses per prompt, score and KL-shape them.

    For each batch of prompts it samples from the current policy ``π_t``, records ``ln π_t`` and
    ``ln π_ref`` per token, computes the raw reward (responses without EOS get ``no_eos_reward``)
    and the shaped reward ``r̃ = r − γ·(ln π_t(y|x) − ln π_ref(y|x))``, and stores the result in
    ``batch["rollout"]`` for ``RLHFModule.training_step``.

    Args:
        max_new_tokens: response length limit.
        min_new_tokens: force at least this many tokens (the TL;DR runs used 53).
        temperature: sampling temperature; log-probs are taken from ``logits / temperature``.
        top_p: nucleus sampling threshold (1.0 = off).
        top_k: top-k sampling (0 = off).
        kl_coef: γ, the weight of the sequence-level KL penalty in the shaped reward.
        no_eos_reward: reward given to responses that hit ``max_new_tokens`` without EOS
            (``null`` keeps the reward source's score).
    """

    def __init__(self, max_new_tokens: int = 53, min_new_tokens: int = 0, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, kl_coef: float = 0.05,
                 no_eos_reward: Optional[float] = -4.0) -> None:
        errors = []
        if max_new_tokens < 1:
            errors.append(("max_new_tokens", f"must be ≥ 1, got {max_new_tokens}"))
        if not temperature > 0:
            errors.append(("temperature", f"must be > 0 for sampling, got {temperature}"))
        if not 0 < top_p <= 1:
            errors.append(("top_p", f"must be in (0, 1], got {top_p}"))
        if kl_coef < 0:
            errors.append(("kl_coef", f"must be ≥ 0, got {kl_coef}"))
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
        self.no_eos_reward = no_eos_reward

    def generation_kwargs(self) -> dict:
        return dict(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                    max_new_tokens=self.max_new_tokens, min_new_tokens=self.min_new_tokens)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: dict, batch_idx: int) -> None:
        if pl_module.objective.needs_rollout:
            batch["rollout"] = self.collect(pl_module, batch)

    @torch.no_grad()
    def collect(self, pl_module: LightningModule, batch: dict) -> RolloutBatch:
        """Generate, score and shape one rollout batch."""
        start = time.perf_counter()
        k = pl_module.objective.samples_per_prompt
        tokenizer = pl_module.tokenizer
        prompt_ids = batch["input_ids"].repeat_interleave(k, dim=0)  # [N, P]
        prompt_mask = batch["attention_mask"].repeat_interleave(k, dim=0)  # [N, P]
        prompts = [text for text in batch["prompt"] for _ in range(k)]
        responses = pl_module.generate(prompt_ids, prompt_mask, **self.generation_kwargs())  # [N, R]
        response_mask, has_eos = response_attention_mask(responses, tokenizer.eos_token_id, tokenizer.pad_token_id)
        responses = responses.masked_fill(response_mask == 0, tokenizer.pad_token_id)
        input_ids = torch.cat([prompt_ids, responses], dim=1)  # [N, P + R]
        attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
        prompt_length = prompt_ids.shape[1]
        generation_seconds = time.perf_counter() - start

        old_logprobs, entropy = pl_module.policy_logprobs(input_ids, attention_mask, prompt_length,
                                                          self.temperature, with_entropy=True)
        ref_logprobs = pl_module.reference_logprobs(input_ids, attention_mask, prompt_length, self.temperature)

        texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
        rewards = pl_module.reward.score(prompts, texts).to(input_ids.device).float()  # [N]
        if self.no_eos_reward is not None:
            rewards = torch.where(has_eos, rewards, torch.full_like(rewards, self.no_eos_reward))
        mask = response_mask.float()
        sequence_kl = (old_logprobs - ref_logprobs).sum(-1)  # [N]
        shaped = kl_shaped_reward(rewards, old_logprobs.sum(-1), ref_logprobs.sum(-1), self.kl_coef)
        metrics = {
            "reward/raw": rewards.mean().item(),
            "reward/shaped": shaped.mean().item(),
            "kl/ref": sequence_kl.mean().item(),
            "gen/length": mask.sum(-1).mean().item(),
            "gen/eos_share": has_eos.float().mean().item(),
            "gen/entropy": masked_mean(entropy, mask).item(),
            "time/generation_seconds": generation_seconds,
            "time/rollout_seconds": time.perf_counter() - start,
        }
        return RolloutBatch(input_ids=input_ids, attention_mask=attention_mask, prompt_length=prompt_length,
                            old_logprobs=old_logprobs, ref_logprobs=ref_logprobs, rewards=rewards,
                            shaped_rewards=shaped, group_size=k, temperature=self.temperature, metrics=metrics)
