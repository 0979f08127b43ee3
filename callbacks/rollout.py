"""``Rollout``: generate responses for each batch of prompts and score them for the objective."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import replace
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from rlhf_lightning.data.encoding import encode_response, pad_rows
from rlhf_lightning.errors import RecipeError, raise_all
from rlhf_lightning.generation import Generation, Generator, HFGenerator, SamplingParams
from rlhf_lightning.module import RLHFModule, require_rlhf_module
from rlhf_lightning.rollout import Samples

FIELD = "rollout.init_args"


class Rollout(Callback):
    """Generate responses for each batch of prompts and score them; configured at the recipe's ``rollout:`` key.

    For each prompt it samples ``objective.needs.samples_per_prompt`` responses from the current policy
    ``π_t`` with the generation engine (appending ``needs.dataset_responses_per_prompt`` data-set
    responses for hybrid pairs), scores them with the module's reward sources (which see every other
    column of the prompt data), gives responses without EOS ``no_eos_reward``, and records ``ln π_ref``
    per token (and the critic's values when the objective has one). The result, a
    :class:`~rlhf_lightning.rollout.Samples`, goes to ``RLHFModule.training_step`` as
    ``batch["samples"]``, which adds ``ln π_t`` and the shaped reward ``r̃ = r − γ·(ln π_t − ln π_ref)``.

    γ (``kl_coef``) and its adaptive controller live here alone. With ``target_kl`` set, γ follows the
    controller of Ziegler et al. (2019): ``γ ← γ·(1 + clip(KL/target − 1, −0.2, 0.2)·n/horizon)`` after each
    batch of ``n`` samples. An objective that keeps the KL in its loss (``Needs(kl_in_reward=False)``,
    GRPO) needs ``kl_coef: 0``; anything else is a recipe error before training.

    Args:
        max_new_tokens: response length limit.
        min_new_tokens: forbid EOS for this many tokens (the TL;DR runs used 53); this changes the sampling
            distribution away from the policy's, so keep 0 for exact on-policy training.
        temperature: sampling temperature; log-probs are taken from ``logits / temperature``.
        top_p: nucleus sampling threshold (1.0 = off). Below 1 the samples come from a cut distribution while
            the log-probs are the full policy's: slightly off-policy (a warning says so).
        top_k: top-k sampling (0 = off; the same caveat as ``top_p``).
        kl_coef: γ (β for PPO), the weight of the KL penalty in the shaped reward.
        target_kl: KL per sequence the adaptive controller aims for (``null`` = fixed γ).
        kl_horizon: the controller's horizon, in samples.
        no_eos_reward: reward given to responses that hit ``max_new_tokens`` without a token of the EOS set
            (``null`` keeps the reward source's score).
        generator: the generation engine, used by rollouts and evaluation (default: Hugging Face
            ``generate`` on the policy, :class:`~rlhf_lightning.generation.HFGenerator`).
    """

    def __init__(self, max_new_tokens: int = 53, min_new_tokens: int = 0, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, kl_coef: float = 0.05, target_kl: Optional[float] = None,
                 kl_horizon: int = 10000, no_eos_reward: Optional[float] = -4.0,
                 generator: Optional[Generator] = None) -> None:
        self.sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                       top_k=top_k, min_new_tokens=min_new_tokens)
        errors = self.sampling.problems(FIELD)
        checks = [("temperature", temperature > 0, f"must be > 0 for sampling, got {temperature}"),
                  ("kl_coef", math.isfinite(kl_coef) and kl_coef >= 0, f"must be a finite number ≥ 0, got {kl_coef}"),
                  ("target_kl", target_kl is None or (math.isfinite(target_kl) and target_kl > 0),
                   f"must be > 0 or null, got {target_kl}"),
                  ("kl_horizon", kl_horizon >= 1, f"must be ≥ 1, got {kl_horizon}"),
                  ("no_eos_reward", no_eos_reward is None or math.isfinite(no_eos_reward),
                   f"must be a finite number or null, got {no_eos_reward}")]
        errors += [RecipeError(f"{FIELD}.{key}", problem) for key, ok, problem in checks
                   if not ok and not any(e.field == f"{FIELD}.{key}" for e in errors)]
        raise_all(errors)
        if top_p < 1 or top_k > 0 or min_new_tokens > 0:
            warnings.warn(f"{FIELD}: top_p={top_p}, top_k={top_k}, min_new_tokens={min_new_tokens} cut the sampling "
                          "distribution, while ln π_t, ln π_ref and the KL are computed from the full "
                          "softmax(logits / temperature): the samples are then slightly off-policy; keep top_p: 1.0, "
                          "top_k: 0 and min_new_tokens: 0 for exact on-policy training", stacklevel=2)
        self.kl_coef = kl_coef
        self.target_kl = target_kl
        self.kl_horizon = kl_horizon
        self.no_eos_reward = no_eos_reward
        self.generator = generator if generator is not None else HFGenerator()

    @property
    def temperature(self) -> float:
        return self.sampling.temperature

    # ------------------------------------------------------------------ checks before training
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Check the rollout against the module and the data once, before any model is loaded."""
        module = require_rlhf_module(pl_module, "rollout")
        module.use_generator(self.generator)
        needs = module.objective.needs
        name = type(module.objective).__name__
        if not needs.rollout:
            return
        self.check_kl_coef(module)
        datamodule = trainer.datamodule
        prompts = [row["input_ids"] for row in getattr(datamodule, "splits", {}).get("train", [])
                   if isinstance(row, dict) and "input_ids" in row]
        if prompts:  # prompt + response must fit the model (else a raw IndexError, a device assert on a GPU)
            module.require_context(max(map(len, prompts)), self.sampling.max_new_tokens, f"{FIELD}.max_new_tokens")
        names_no_response = hasattr(datamodule, "reference_column") and datamodule.reference_column is None
        if needs.dataset_responses_per_prompt and names_no_response:
            raise RecipeError("data.init_args.reference_column",
                              f"objective {name} pairs samples with data set responses, but the data module names "
                              "no response column", "set reference_column to the column of the data set's responses")

    def check_kl_coef(self, module: RLHFModule) -> None:
        """An objective that keeps the KL in its loss (GRPO) must not also get KL-shaped rewards."""
        name = type(module.objective).__name__
        if not module.objective.needs.kl_in_reward and (self.kl_coef > 0 or self.target_kl is not None):
            raise RecipeError(f"{FIELD}.kl_coef", f"{name} keeps the KL to the reference in its loss and learns from "
                              f"the raw reward, but the rollout shapes rewards with γ = {self.kl_coef}"
                              + (f" (adaptive, target_kl {self.target_kl})" if self.target_kl is not None else ""),
                              "set rollout.init_args.kl_coef: 0 (and target_kl: null); the objective's own KL "
                              "weight (e.g. GRPO's beta) regularises it")

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: dict, batch_idx: int) -> None:
        if pl_module.objective.needs.rollout:
            batch["samples"] = self.collect(pl_module, batch)

    # ------------------------------------------------------------------ adaptive KL coefficient
    def state_dict(self) -> dict:
        """γ, saved in checkpoints so that a resumed run continues with the same coefficient."""
        return {"kl_coef": self.kl_coef}

    def load_state_dict(self, state_dict: dict) -> None:
        self.kl_coef = state_dict.get("kl_coef", self.kl_coef)

    def update_kl_coef(self, observed_kl: float, num_samples: int) -> None:
        """One step of the adaptive controller (no-op without ``target_kl``)."""
        if self.target_kl is None:
            return
        error = min(max(observed_kl / self.target_kl - 1.0, -0.2), 0.2)
        self.kl_coef *= 1.0 + error * num_samples / self.kl_horizon

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Adaptive KL: one controller step with this batch's KL to the reference (the step's logged
        ``kl/ref``, already the mean over processes)."""
        observed = trainer.callback_metrics.get("kl/ref")
        if self.target_kl is None or observed is None or not isinstance(batch, dict) or "samples" not in batch:
            return
        self.update_kl_coef(float(observed), len(batch["samples"]))

    # ------------------------------------------------------------------ one rollout batch
    @torch.no_grad()
    def collect(self, module: RLHFModule, batch: dict) -> Samples:
        """Generate and score one rollout batch of ``B`` prompts.

        1. Sample ``k = needs.samples_per_prompt`` responses per prompt from ``π_t`` with the engine:
           responses ``[B·k, R]``, their masks and which ended with a token of the EOS set.
        2. Hybrid pairs: append each prompt's data-set response (encoded as the offline data modules
           encode responses), so that every prompt owns ``group = k + dataset`` consecutive rows.
        3. Decode the responses and score them with the reward sources, which see the prompts and every
           other column of the prompt data; a response without EOS gets ``no_eos_reward``.
        4. ``ln π_ref`` per response token, and the critic's values when the objective has one.

        Generation and step 4 run in the trainer's forward context (autocast under ``*-mixed``), as the
        update does; the reward sources run outside it, in their own precision.

        Returns the :class:`~rlhf_lightning.rollout.Samples` (``N = B·group`` rows).
        """
        start = time.perf_counter()
        needs = module.objective.needs
        # 1. samples of π_t
        k = needs.samples_per_prompt
        with module.precision_context():  # the update's autocast: the sampler is the policy that is trained
            generation = module.generate(batch["input_ids"], batch["attention_mask"],
                                         replace(self.sampling, num_samples=k))  # [B·k, R]
        # 2. data-set responses (hybrid pairs)
        if needs.dataset_responses_per_prompt:
            generation = self._with_dataset_responses(module, batch, generation, k, needs.dataset_responses_per_prompt)
        group = needs.group_size
        input_ids = torch.cat([batch["input_ids"].repeat_interleave(group, 0), generation.responses], 1)  # [N, P + R]
        attention_mask = torch.cat([batch["attention_mask"].repeat_interleave(group, 0), generation.response_mask], 1)
        prompt_length = batch["input_ids"].shape[1]
        generation_seconds = time.perf_counter() - start
        # 3. rewards
        texts = module.tokenizer.batch_decode(generation.responses, skip_special_tokens=True)
        prompts = [prompt for prompt in batch["prompt"] for _ in range(group)]
        columns = {name: [value for value in values for _ in range(group)]
                   for name, values in batch.get("columns", {}).items()}
        rewards, parts = module.reward.score_terms(prompts, texts, group, **columns)
        rewards = rewards.to(input_ids.device).float()  # [N]
        if self.no_eos_reward is not None:
            rewards = torch.where(generation.ended.to(rewards.device), rewards,
                                  torch.full_like(rewards, self.no_eos_reward))
        # 4. reference log-probs and critic values
        with module.precision_context():  # one precision for ln π_ref, ln π_t and the critic (rewards: their own)
            ref_logprobs = module.reference_logprobs(input_ids, attention_mask, prompt_length, self.temperature)
            values = module.critic_values(input_ids, attention_mask, prompt_length) if needs.critic else None
        metrics = {
            "reward/raw": rewards.mean().item(),
            **{f"reward/{name}": part.float().mean().item() for name, part in parts.items()},
            "gen/length": generation.response_mask.sum(-1).float().mean().item(),
            "gen/eos_share": generation.ended.float().mean().item(),
            "time/generation_seconds": generation_seconds,
            "time/rollout_seconds": time.perf_counter() - start,
        }
        return Samples(input_ids=input_ids, attention_mask=attention_mask, prompt_length=prompt_length,
                       ref_logprobs=ref_logprobs, rewards=rewards, group_size=group, temperature=self.temperature,
                       kl_coef=self.kl_coef, values=values, metrics=metrics)

    @staticmethod
    def _with_dataset_responses(module: RLHFModule, batch: dict, generation: Generation, k: int,
                                per_prompt: int) -> Generation:
        """``generation`` (``[B·k, R]``) with ``per_prompt`` copies of each prompt's data-set response after its
        ``k`` samples (``[B·(k + per_prompt), W]``); a data-set response ends with EOS (or, after a chat prompt, the
        template's end-of-turn token) and counts as ended."""
        if "reference" not in batch:
            raise RecipeError("data.init_args.reference_column",
                              f"objective {type(module.objective).__name__} pairs samples with data set responses, "
                              "but the training batches carry none", "set reference_column to the response column")
        tokenizer = module.tokenizer
        encoded = [encode_response(tokenizer, text, prompt) for text, prompt in zip(batch["reference"], batch["prompt"])]
        B, device = len(encoded), generation.responses.device
        width = max(generation.responses.shape[1], max(len(ids) for ids in encoded))
        sampled_ids, sampled_mask = (torch.nn.functional.pad(t, (0, width - t.shape[1]), value=v) for t, v in
                                     ((generation.responses, tokenizer.pad_token_id), (generation.response_mask, 0)))
        data_ids, data_mask = pad_rows(encoded, tokenizer.pad_token_id, "right", width)

        def interleave(sampled: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
            data = data.to(device)[:, None].expand(B, per_prompt, *data.shape[1:])
            return torch.cat([sampled.view(B, k, *sampled.shape[1:]), data], 1).flatten(0, 1)

        ended = torch.ones(B, dtype=torch.bool, device=device)
        return Generation(responses=interleave(sampled_ids, data_ids), response_mask=interleave(sampled_mask, data_mask),
                          ended=interleave(generation.ended.to(device), ended))
