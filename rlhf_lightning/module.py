"""``RLHFModule``: owns the models, runs the objective on each rollout, logs."""

from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Optional, Union

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch import Tensor, nn

from rlhf_lightning.batches import SequenceBatch
from rlhf_lightning.checkpoint_io import (OutputNotWritten, install as install_safe_checkpoint_io, nothing_left_to_train,
                                          give_user_file_mode, os_error_in, state_problem)
from rlhf_lightning.critic import load_value_model, sequence_scores, token_values, value_model_parts
from rlhf_lightning.distributed import FSDP2Strategy, is_sharded, shard, strategy_problems
from rlhf_lightning.distributed.checkpoints import remove_path, replace_path
from rlhf_lightning.distributed.export import save_sharded_hf_directory
from rlhf_lightning.distributed.fsdp import upcast_trainable
from rlhf_lightning.distributed.zero3 import is_partitioned
from rlhf_lightning.errors import RecipeError, raise_all
from rlhf_lightning.generation import Generation, Generator, HFGenerator, SamplingParams
from rlhf_lightning.guards import (DivergenceLimits, DivergenceMonitor, check_loss_value, clip_gradient_norm,
                                   require_finite)
from rlhf_lightning.logprobs import response_logprobs, sequence_nll
from rlhf_lightning.models import (ModelConfig, companion_problems, context_length, disable_dropout, freeze, load_causal_lm,
                                   load_model_config, load_tokenizer, same_tokenizer, save_hf_directory,
                                   tokenizer_problems)
from rlhf_lightning.objectives.base import Objective
from rlhf_lightning.optim import MasterWeightAdamW, has_low_precision
from rlhf_lightning.reference_cache import ReferenceCache
from rlhf_lightning.rewards import RewardModel, RewardSource, RewardTerm, as_reward_source, check_columns
from rlhf_lightning.rollout import Rollout, Samples
from rlhf_lightning.step_metrics import log_step_metrics

# Known, harmless Lightning warnings: the frozen reference is in eval mode on purpose, and checkpoints
# written after an optimizer step are what a resumed run needs.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
warnings.filterwarnings("ignore", message=r"Using ModelCheckpoint with manual optimization")
# The library's data modules resume exactly (their samplers continue from the data position stored in the
# checkpoint: tests/test_training.py), so Lightning's generic warning does not apply to them.
RESUME_WARNING = r"You're resuming from a checkpoint that ended before the epoch ended"

LRSchedule = Literal["constant", "linear", "cosine"]
PolicyForward = tuple[Optional[Tensor], dict[str, Tensor]]  # what the loss takes: log-probs and other outputs


def require_rlhf_module(pl_module: LightningModule, key: str) -> "RLHFModule":
    """``pl_module`` if it is an :class:`RLHFModule`; a clear error naming the recipe ``key`` otherwise."""
    if not isinstance(pl_module, RLHFModule):
        raise RecipeError(key, f"works on an rlhf_lightning.RLHFModule (or a subclass), got {type(pl_module).__name__}",
                          "set model.class_path to rlhf_lightning.RLHFModule or a subclass of it")
    return pl_module


def optimisation_problems(lr: float, critic_lr: Optional[float], weight_decay: float, warmup_steps: int,
                          max_grad_norm: Optional[float], micro_batch_size: Optional[int]) -> list[RecipeError]:
    """One :class:`RecipeError` per optimisation setting out of range (non-finite numbers included)."""
    def finite(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    checks = [("lr", finite(lr) and lr > 0, f"must be > 0 and finite, got {lr}", "e.g. 1e-5"),
              ("critic_lr", critic_lr is None or (finite(critic_lr) and critic_lr > 0),
               f"must be > 0 and finite, or null (= lr), got {critic_lr}", ""),
              ("weight_decay", finite(weight_decay) and weight_decay >= 0,
               f"must be ≥ 0 and finite, got {weight_decay}", "e.g. 0.0 or 0.01"),
              ("warmup_steps", warmup_steps >= 0, f"must be ≥ 0, got {warmup_steps}", ""),
              ("max_grad_norm", max_grad_norm is None or (finite(max_grad_norm) and max_grad_norm > 0),
               f"must be > 0 and finite, or null (no clipping), got {max_grad_norm}", "e.g. 1.0"),
              ("micro_batch_size", micro_batch_size is None or micro_batch_size >= 1,
               f"must be ≥ 1 or null, got {micro_batch_size}", "")]
    return [RecipeError(f"model.init_args.{key}", problem, fix) for key, ok, problem, fix in checks if not ok]


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA peak allocation on a GPU, else the CPU peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main_loss_key(names: Iterable[str]) -> Optional[str]:
    """The loss an objective minimises among its metric names: ``loss/total`` when it reports parts, else its one
    ``loss/<name>`` (``None`` without any)."""
    losses = [name for name in names if name.startswith("loss/")]
    return "loss/total" if "loss/total" in losses else (losses[0] if losses else None)


class RLHFModule(LightningModule):
    """Policy, frozen reference and reward source, trained by a swappable :class:`Objective`.

    Models are loaded in :meth:`configure_model` (after the data module's ``prepare_data``, inside
    the strategy's context). Optimisation is manual: each rollout batch gives
    ``objective.inner_epochs × objective.num_minibatches`` optimizer steps, so ``trainer.max_steps``
    counts optimizer steps while ``max_epochs``/``limit_train_batches`` count rollout batches.

    Args:
        policy: the model to train (HF directory, optional LoRA/QLoRA).
        objective: the loss, e.g. ``rlhf_lightning.objectives.REBEL``.
        reward: reward source for online objectives (reward model, Python function, task judge), or a
            list of weighted sources (``{source: ..., weight: ..., name: ...}``) whose weighted sum is the reward.
        reference: the frozen reference ``π_ref``; by default the policy's own starting weights
            (the adapter disabled under LoRA, otherwise a frozen copy loaded from ``policy.path``).
        critic: the value model of objectives that need one (PPO): a reward-model directory (the
            default when ``reward`` is a :class:`RewardModel`) or a causal-LM directory (new value head).
        critic_lr: learning rate of the critic (default: ``lr``).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        lr_schedule: ``constant``, ``linear`` (decay to 0) or ``cosine``, after ``warmup_steps``.
        warmup_steps: optimizer steps of linear warm-up.
        max_grad_norm: clip the gradient norm to this value (``null`` to disable).
        micro_batch_size: rows per forward/backward; a minibatch larger than this is split and its
            gradients accumulated (whole prompt groups are kept together).
        precompute_reference: offline objectives: compute ``ln π_ref`` of every training row once before
            training (then free the frozen reference copy) instead of a reference forward per batch.
        old_logprobs_from_update: online objectives whose update is one optimizer step over the whole
            rollout in one forward (``inner_epochs`` 1, ``num_minibatches`` 1, no critic, no row selection in
            ``prepare``, no micro-batching below the rollout's size): take ``ln π_t`` from that forward
            (detached) instead of a separate no-grad pass before the update. Before the step ``π_θ = π_t``,
            so the numbers are the same and each batch costs one policy forward less. ``false`` always
            runs the separate pass.
        divergence: limits on divergence that stays finite (KL to the reference, entropy at the uniform
            limit), checked on every rollout batch: stop or warn (see :class:`~rlhf_lightning.guards.DivergenceLimits`).
            NaN/inf rewards, losses and gradients always stop the run before the update.
    """

    def __init__(
        self,
        policy: ModelConfig,
        objective: Objective,
        reward: Optional[Union[RewardSource, list[RewardTerm]]] = None,
        reference: Optional[ModelConfig] = None,
        critic: Optional[ModelConfig] = None,
        lr: float = 1e-5,
        critic_lr: Optional[float] = None,
        weight_decay: float = 0.0,
        lr_schedule: LRSchedule = "linear",
        warmup_steps: int = 0,
        max_grad_norm: Optional[float] = 1.0,
        micro_batch_size: Optional[int] = None,
        precompute_reference: bool = False,
        old_logprobs_from_update: bool = True,
        divergence: Optional[DivergenceLimits] = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        raise_all(optimisation_problems(lr=lr, critic_lr=critic_lr, weight_decay=weight_decay,
                                        warmup_steps=warmup_steps, max_grad_norm=max_grad_norm,
                                        micro_batch_size=micro_batch_size)
                  + (divergence or DivergenceLimits()).problems())
        self._divergence_monitor = DivergenceMonitor(divergence or DivergenceLimits())
        group = objective.needs.samples_per_prompt
        if micro_batch_size is not None and micro_batch_size % group:
            raise RecipeError("model.init_args.micro_batch_size",
                              f"{micro_batch_size} rows do not hold whole groups of {group} samples per prompt",
                              f"use a multiple of {group} (samples_per_prompt of {type(objective).__name__})")
        self.policy_config = policy
        self.reference_config = reference
        self.critic_config = critic
        self.critic_lr = critic_lr
        self.objective = objective
        self.reward = as_reward_source(reward)
        self.generator: Generator = HFGenerator()  # the Rollout callback hands over the recipe's engine
        self.lr, self.weight_decay, self.max_grad_norm = lr, weight_decay, max_grad_norm
        self.lr_schedule, self.warmup_steps = lr_schedule, warmup_steps
        self.micro_batch_size = micro_batch_size
        self.precompute_reference, self.old_logprobs_from_update = precompute_reference, old_logprobs_from_update
        self._reference_cache: Optional[ReferenceCache] = None
        self._context_needs: list[tuple[int, int, str]] = []  # (prompt tokens, new tokens, recipe field)
        self.policy: Optional[nn.Module] = None
        self.reference: Optional[nn.Module] = None
        self.critic: Optional[nn.Module] = None
        self.reference_for_evaluation = False  # set by evaluation callbacks that compare with the start policy
        self.tokenizer = None
        self.summary: dict[str, Any] = {}
        self._samples_generated = 0
        self._rollout_batches = 0
        self._busy_seconds = 0.0
        self._fit_started = 0.0
        self._seconds_before_resume = 0.0  # training time of the processes before a resume, up to its checkpoint

    # ------------------------------------------------------------------ models
    def configure_model(self) -> None:
        """Load the models: the reward sources first (so that a reward asking for a data column the prompts lack
        fails before the policy loads), then the tokenizer, policy, reference and critic; then set the
        generation engine up for the policy."""
        if self.policy is not None:
            return
        needs = self.objective.needs
        if needs.rollout:
            self._setup_reward()
        field = "model.init_args.policy"
        if self.tokenizer is None:
            self.tokenizer = self._policy_tokenizer()
        if needs.head == "scalar":  # a reward model: one output on the last token
            policy = load_value_model(self.policy_config, field)
            if policy.config.pad_token_id is None:
                policy.config.pad_token_id = self.tokenizer.pad_token_id
        else:
            policy = load_causal_lm(self.policy_config, field)
        disable_dropout(policy)
        self.policy = policy.train()
        wants_reference = needs.reference or self.reference_for_evaluation
        if wants_reference and needs.head == "causal_lm" and not self._reference_is_disabled_adapter:
            ref_config = self.reference_config or ModelConfig(
                path=self.policy_config.path, revision=self.policy_config.revision, dtype=self.policy_config.dtype,
                trust_remote_code=self.policy_config.trust_remote_code)
            self.reference = freeze(load_causal_lm(ref_config, "model.init_args.reference"))
        if needs.critic:
            self.critic = load_value_model(self._critic_config(), "model.init_args.critic")
            disable_dropout(self.critic)
            self.critic.train()
        self._export_dtype = next(self.policy.parameters()).dtype  # as loaded (a LoRA model: its base's)
        if self._trainer is not None and isinstance(self.trainer.strategy, FSDP2Strategy):
            self._shard_models(self.trainer.strategy.shard_mesh)
        if needs.head == "causal_lm":
            self.generator.setup(self.tokenizer, self.policy)

    def _shard_models(self, mesh) -> None:
        """FSDP2: shard the policy, reference and critic over ``mesh``; trained models get fp32 master shards."""
        scalar_policy = self.objective.needs.head == "scalar"  # a reward model: backbone and head called apart
        for model, is_value_model in ((self.policy, scalar_policy), (self.reference, False), (self.critic, True)):
            if model is not None:
                shard(model, mesh, called_directly=value_model_parts(model) if is_value_model else ())
        for model in (self.policy, self.critic):
            if model is not None:
                upcast_trainable(model)

    def _policy_tokenizer(self):
        config = self.policy_config
        own = config.tokenizer is None  # the tokenizer stored with the policy: same hub revision
        return load_tokenizer(config.tokenizer or config.path, self._policy_tokenizer_field, config.trust_remote_code,
                              revision=config.revision if own else None)

    def setup(self, stage: str) -> None:
        """Checks before any weights load (the checkpoint's ``config.json`` and the tokenizers only): the
        policy's tokenizer fits its embeddings, prompts + generated tokens fit its positions, and the data
        module encodes with the same tokenizer."""
        if self.policy is not None:
            return
        if self._trainer is not None:
            raise_all(strategy_problems(self.trainer.strategy, str(self.trainer.precision),
                                        load_in_4bit=self.policy_config.load_in_4bit))
            install_safe_checkpoint_io(self.trainer.strategy)
            datamodule = self.trainer.datamodule
            if datamodule is not None and type(datamodule).__module__.startswith("rlhf_lightning."):
                warnings.filterwarnings("ignore", message=RESUME_WARNING)
        self.tokenizer = self._policy_tokenizer()
        config = self.policy_model_config()
        raise_all(tokenizer_problems(self.tokenizer, config, self._policy_tokenizer_field))
        self._check_context()
        raise_all(companion_problems(self.tokenizer, config, self._context_needs, self._companions()))
        data_tokenizer = getattr(self.trainer.datamodule, "tokenizer", None) if self._trainer else None
        if data_tokenizer is not None and not same_tokenizer(data_tokenizer, self.tokenizer):
            raise RecipeError("data.init_args.tokenizer", "the data module's tokenizer is not the policy's (another "
                              "vocabulary or EOS): prompts would be encoded into tokens the policy reads differently",
                              "set data.init_args.tokenizer to the policy's tokenizer (its path, or "
                              "model.init_args.policy.tokenizer)")

    def policy_model_config(self):
        """The policy checkpoint's config (read once, without weights)."""
        if getattr(self, "_policy_model_config", None) is None:
            self._policy_model_config = load_model_config(self.policy_config, "model.init_args.policy")
        return self._policy_model_config

    def require_context(self, prompt_tokens: int, new_tokens: int, field: str) -> None:
        """Prompts of ``prompt_tokens`` plus ``new_tokens`` generated ones must fit the policy's positions:
        checked in :meth:`setup`, before any weights load (callbacks register what they will generate)."""
        self._context_needs.append((prompt_tokens, new_tokens, field))

    def _check_context(self) -> None:
        limit = context_length(self.policy_model_config())
        for prompt_tokens, new_tokens, field in self._context_needs:
            if limit is not None and prompt_tokens + new_tokens > limit:
                raise RecipeError(field, f"prompts of up to {prompt_tokens} tokens + {new_tokens} new tokens exceed "
                                         f"the policy's {limit} positions",
                                  f"lower it to {max(limit - prompt_tokens, 0)} or less, or the data's "
                                  "max_prompt_length")

    def _setup_reward(self) -> None:
        """Set the reward sources up and check that the prompt data has every column they ask for."""
        if self.reward is None:
            raise RecipeError("model.init_args.reward",
                              f"objective {type(self.objective).__name__} learns from rewards, but no reward source is set",
                              "set model.init_args.reward, e.g. class_path: rlhf_lightning.rewards.RewardModel")
        self.reward.setup(self.trainer.strategy.root_device if self._trainer else torch.device("cpu"))
        available = getattr(self.trainer.datamodule, "prompt_columns", None) if self._trainer else None
        if available is not None:
            check_columns(self.reward, available, "model.init_args.reward", "the training prompts")

    def use_generator(self, generator: Generator) -> None:
        """Generate rollouts and evaluation responses with ``generator`` (the Rollout callback's engine)."""
        self.generator = generator
        if self.policy is not None and self.objective.needs.head == "causal_lm":
            generator.setup(self.tokenizer, self.policy)

    @property
    def _policy_tokenizer_field(self) -> str:
        return "model.init_args.policy.tokenizer" if self.policy_config.tokenizer else "model.init_args.policy.path"

    def _companions(self) -> dict[str, Optional[ModelConfig]]:
        """The models that read the policy's token ids from their own configs (checked before loading)."""
        needs = self.objective.needs
        own_reference = (needs.reference or self.reference_for_evaluation) and needs.head == "causal_lm"
        return {"model.init_args.reference": self.reference_config if own_reference else None,
                "model.init_args.critic": self._critic_config() if needs.critic else None}

    def _critic_config(self) -> ModelConfig:
        if self.critic_config is not None:
            return self.critic_config
        if isinstance(self.reward, RewardModel):
            return ModelConfig(path=self.reward.path, revision=self.reward.revision, dtype=self.policy_config.dtype)
        raise RecipeError("model.init_args.critic", f"objective {type(self.objective).__name__} needs a critic "
                          "(value model), and none is set",
                          "set model.init_args.critic.path to a reward-model or causal-LM directory "
                          "(e.g. the policy's path), or use a RewardModel reward to start the critic from it")

    @property
    def _reference_is_disabled_adapter(self) -> bool:
        return self.reference_config is None and self.policy_config.lora is not None

    @contextmanager
    def _reference_model(self) -> Iterator[nn.Module]:
        if self.reference is not None:
            yield self.reference
        elif self._reference_is_disabled_adapter:
            with self.policy.disable_adapter():
                yield self.policy
        else:
            raise RuntimeError("this objective was configured without a reference model")

    # ------------------------------------------------------------------ rollout helpers
    def precision_context(self):
        """The trainer's forward context (autocast under ``bf16-mixed``/``16-mixed``): rollouts and evaluation
        run in it, so that sampling, ``ln π_ref`` and ``ln π_t`` use the precision the update uses."""
        return self.trainer.precision_plugin.forward_context() if self._trainer is not None else nullcontext()

    def generate(self, input_ids: Tensor, attention_mask: Tensor, params: SamplingParams,
                 use_reference: bool = False) -> Generation:
        """Responses for left-padded prompts from the policy (or the reference) through the generation engine."""
        context = self._reference_model() if use_reference else nullcontext(self.policy)
        with context as model:
            return self.generator.generate(model, input_ids, attention_mask, params, use_reference=use_reference)

    def policy_logprobs(self, input_ids: Tensor, attention_mask: Tensor, prompt_length: int,
                        temperature: float = 1.0, with_entropy: bool = False,
                        entropy_grad: bool = True) -> tuple[Tensor, Optional[Tensor]]:
        """Per-token ``ln π_θ`` of the response block (with grad when grad is enabled)."""
        return response_logprobs(self.policy, input_ids, attention_mask, prompt_length, temperature, with_entropy,
                                 entropy_grad)

    @torch.no_grad()
    def rollout_logprobs(self, samples: Samples) -> tuple[Tensor, Optional[Tensor]]:
        """``ln π_t`` of the samples (``[N, R]``) and the per-token entropy, from a no-grad policy pass before any
        update of this rollout batch (a policy of another kind, e.g. a diffusion model, overrides it)."""
        return self.policy_logprobs(samples.input_ids, samples.attention_mask, samples.prompt_length,
                                    samples.temperature, with_entropy=True)

    def takes_old_logprobs_from_update(self, num_rows: int) -> bool:
        """Whether the update of a rollout of ``num_rows`` rows is a single forward over all of them before
        any parameter change, so that ``training_step`` takes ``ln π_t`` from it instead of a separate
        no-grad pass (see ``old_logprobs_from_update``)."""
        objective, needs = self.objective, self.objective.needs
        return (self.old_logprobs_from_update and needs.head == "causal_lm"
                and objective.inner_epochs == 1 and objective.num_minibatches == 1
                and not needs.critic and not needs.selects_rows
                and (self.micro_batch_size is None or self.micro_batch_size >= num_rows))

    @torch.no_grad()
    def reference_logprobs(self, input_ids: Tensor, attention_mask: Tensor, prompt_length: int,
                           temperature: float = 1.0) -> Tensor:
        """Per-token ``ln π_ref`` of the response block."""
        with self._reference_model() as model:
            return response_logprobs(model, input_ids, attention_mask, prompt_length, temperature)[0]

    def critic_values(self, input_ids: Tensor, attention_mask: Tensor, prompt_length: int) -> Tensor:
        """Per-token critic values ``[N, R]`` of the response block (with grad when grad is enabled)."""
        return token_values(self.critic, input_ids, attention_mask, prompt_length)

    def reduce_sum(self, tensor: Tensor) -> Tensor:
        """Sum over all processes (identity with one); objectives use it for global statistics."""
        if self._trainer is None or self.trainer.world_size == 1:
            return tensor
        return self.trainer.strategy.reduce(tensor.clone(), reduce_op="sum")

    # ------------------------------------------------------------------ optimisation
    def _total_optimizer_steps(self) -> int:
        updates_per_batch = self.objective.inner_epochs * self.objective.num_minibatches
        if self.trainer.max_steps and self.trainer.max_steps > 0:
            return self.trainer.max_steps
        return int(self.trainer.estimated_stepping_batches) * updates_per_batch

    def configure_optimizers(self):
        from transformers import get_scheduler

        params = [p for p in self.policy.parameters() if p.requires_grad]
        if not params:
            raise RecipeError("model.init_args.policy", "the policy has no trainable parameters",
                              "check the LoRA target_modules")
        groups = [{"params": params, "lr": self.lr}]
        if self.critic is not None:
            groups.append({"params": [p for p in self.critic.parameters() if p.requires_grad],
                           "lr": self.critic_lr or self.lr})
        if has_low_precision(p for group in groups for p in group["params"]) and not self._uses_deepspeed:
            # bf16/fp16 weights (dtype: bfloat16, or precision: bf16-true): step fp32 master copies, or small
            # updates would be rounded away (see rlhf_lightning.optim). DeepSpeed keeps fp32 masters itself.
            optimizer = MasterWeightAdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        else:
            optimizer = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        total = max(1, self._total_optimizer_steps())
        name = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[self.lr_schedule]
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=self.warmup_steps, num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _backward_minibatch(self, minibatch: Any, pretrain: Optional[dict] = None,
                            forward: Optional[PolicyForward] = None) -> dict[str, float]:
        """Forward/backward over one minibatch (split into micro-batches); returns its metrics.

        ``forward``: the policy's outputs over exactly this minibatch, already computed with grad (the
        update's forward that also gave ``ln π_t``); it is used instead of a new forward. With ``pretrain``
        (PPO-ptx), the policy's LM loss on that batch is added, × ``needs.pretrain_coef``.
        """
        chunks = [minibatch] if forward is not None or not self.micro_batch_size else minibatch.split(self.micro_batch_size)
        metrics: dict[str, float] = defaultdict(float)
        for index, chunk in enumerate(chunks):
            logprobs, outputs = forward if forward is not None else self._forward(chunk)
            loss, chunk_metrics = self.objective.loss(logprobs, chunk, **outputs)
            check_loss_value(loss, type(self.objective).__name__)
            require_finite("loss", loss, self._batch_number, self.reduce_sum)
            weight = self.objective.chunk_weight(chunk, minibatch) if len(chunks) > 1 else 1.0
            self._backward(loss * weight, closes_step=index == len(chunks) - 1 and pretrain is None)
            for key, value in chunk_metrics.items():
                metrics[key] += float(value) * weight
        if pretrain is not None:  # the pretraining mix (InstructGPT PPO-ptx): + coef · token NLL on pretraining text
            ptx = self._backward_ptx(pretrain)
            metrics["loss/ptx"] = ptx
            metrics["loss/total"] += self.objective.needs.pretrain_coef * ptx
        return metrics

    def _forward(self, chunk: Any, with_entropy: bool = False) -> PolicyForward:
        """What the objective's loss needs for one chunk: policy log-probs (or reward-model scores), entropy
        and critic values, all with grad. ``with_entropy`` also returns the entropy when the loss does not
        take it (detached, for the ``gen/entropy`` metric)."""
        needs = self.objective.needs
        outputs: dict[str, Tensor] = {}
        if needs.head == "scalar":
            outputs["scores"] = sequence_scores(self.policy, chunk.input_ids, chunk.attention_mask, chunk.prompt_length)
            return None, outputs
        logprobs, entropy = self.policy_logprobs(chunk.input_ids, chunk.attention_mask, chunk.prompt_length,
                                                 getattr(chunk, "temperature", 1.0),
                                                 with_entropy=needs.entropy or with_entropy,
                                                 entropy_grad=needs.entropy)
        if needs.entropy or with_entropy:
            outputs["entropy"] = entropy
        if needs.critic:
            outputs["values"] = self.critic_values(chunk.input_ids, chunk.attention_mask, chunk.prompt_length)
        return logprobs, outputs

    # ------------------------------------------------------------------ offline objectives
    def _with_reference(self, batch: SequenceBatch) -> SequenceBatch:
        """Fill ``batch.ref_logprobs`` (from the precomputed cache, or live) when the objective needs them."""
        if not self.objective.needs.reference or batch.ref_logprobs is not None:
            return batch
        if self._reference_cache is not None:
            batch.ref_logprobs = self._reference_cache.lookup(batch)
        else:
            batch.ref_logprobs = self.reference_logprobs(batch.input_ids, batch.attention_mask, batch.prompt_length)
        return batch

    def _offline_step(self, batch: SequenceBatch) -> None:
        if not isinstance(batch, SequenceBatch):
            raise RecipeError("data", f"objective {type(self.objective).__name__} trains on a data set of sequences, "
                              "but the data module gives other batches",
                              "use an SFT, preference or unpaired data module (rlhf_lightning.data)")
        start = time.perf_counter()
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        metrics = self._backward_minibatch(self._with_reference(batch))
        self._optimizer_step(optimizer, scheduler)
        seconds = time.perf_counter() - start
        self._busy_seconds += seconds
        self._samples_generated += len(batch)
        self._rollout_batches += 1
        metrics["train/lr"] = scheduler.get_last_lr()[0]
        metrics["perf/samples_per_second"] = len(batch) / max(seconds, 1e-9)
        self._note_train_loss(metrics)
        log_step_metrics(self, metrics)

    @torch.no_grad()
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if self.objective.needs.rollout or not isinstance(batch, SequenceBatch):
            return
        logprobs, outputs = self._forward(self._with_reference(batch))
        _, metrics = self.objective.loss(logprobs, batch, **outputs)
        self.log_dict({f"val/{key}": float(value) for key, value in metrics.items()}, on_step=False, on_epoch=True,
                      batch_size=batch.num_prompts, sync_dist=self.trainer.world_size > 1)

    def on_validation_epoch_end(self) -> None:
        """The validation loss and the objective's own metrics (e.g. ``rm_accuracy``, ``reward_accuracy``) to the
        summary: the last validation's values are the ones ``summary.json`` keeps."""
        loss = main_loss_key(k[len("val/"):] for k in self.trainer.callback_metrics if k.startswith("val/loss/"))
        if loss is not None:
            self.summary["val_loss"] = round(float(self.trainer.callback_metrics[f"val/{loss}"]), 4)
        for metric, key in self.objective.summary_metrics.items():
            value = self.trainer.callback_metrics.get(f"val/{metric}")
            if value is not None:
                self.summary[key] = round(float(value), 4)

    def on_train_start(self) -> None:
        self._fit_started = time.perf_counter()
        if self.precompute_reference and self.objective.needs.reference and not self.objective.needs.rollout:
            self._reference_cache = ReferenceCache.build(self.reference_logprobs, self.trainer.datamodule,
                                                         self.device, show_progress=self.trainer.is_global_zero)
            if self.reference is not None and not self.reference_for_evaluation:  # no longer needed: free it
                self.reference = None

    def _observe_divergence(self, rollout: Rollout) -> None:
        """KL to the reference and token entropy of ``π_t`` (averaged over processes) against the limits."""
        values = torch.tensor([rollout.metrics["kl/ref"], rollout.metrics.get("gen/entropy", float("nan"))],
                              dtype=torch.float64, device=self.device)
        world = self.trainer.world_size if self._trainer is not None else 1
        kl, entropy = (self.reduce_sum(values) / world).tolist()
        vocab = int(getattr(self.policy_model_config(), "vocab_size", 0) or 0)
        self._divergence_monitor.observe(self._batch_number, kl, None if math.isnan(entropy) else entropy, vocab)

    def _optimizer_step(self, optimizer, scheduler) -> None:
        """Clip the gradients and check that their norm is finite, then step the optimizer and the schedule.

        The norm (one pass over the gradients, which also clips) is checked before the step: clipping would
        turn an infinite gradient into a zero update. DeepSpeed clips inside its own step, and a loss scaler
        (``16-mixed``) unscales first and skips overflowing steps itself: those go through Lightning's
        ``clip_gradients``, and the loss check stands in.
        """
        if self._uses_deepspeed or getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            if self.max_grad_norm:
                self.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")
        else:
            params = (p for group in optimizer.param_groups for p in group["params"])
            norm = clip_gradient_norm(params, self.max_grad_norm)
            if norm is not None:
                require_finite("gradient norm", norm, self._batch_number)  # gradients are synced: same on all ranks
            self._divergence_monitor.observe_gradient(self._batch_number, None if norm is None else float(norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()

    @property
    def _batch_number(self) -> int:
        """The current training batch, counted from 1 over the whole run (a resumed run included)."""
        if self._trainer is None:
            return 0
        return int(self.trainer.fit_loop.epoch_loop.batch_progress.total.ready)

    def _backward(self, loss: Tensor, closes_step: bool) -> None:
        """``manual_backward``; ``closes_step``: the last backward before the optimizer step.

        Under DeepSpeed the engine is told which backward closes the step (it would otherwise take every
        backward for a step of its own), and, after any other one, that a new micro-step begins: its
        ``forward`` does that, and the module's forwards do not pass through the engine (ZeRO-3 would
        otherwise overwrite the gradients of the earlier micro-batches instead of adding to them).
        """
        engine = self.trainer.strategy.deepspeed_engine if self._uses_deepspeed else None
        if engine is not None:
            engine.set_gradient_accumulation_boundary(closes_step)
        self.manual_backward(loss)
        if engine is not None and not closes_step and hasattr(engine.optimizer, "clear_backward_seen_flag"):
            engine.optimizer.clear_backward_seen_flag()

    @property
    def _uses_deepspeed(self) -> bool:
        return self._trainer is not None and isinstance(self.trainer.strategy, DeepSpeedStrategy)

    def _backward_ptx(self, pretrain: dict) -> float:
        """Backward of ``pretrain_coef × (mean token NLL of the policy on the pretraining batch)``; returns the NLL.

        Micro-batches are weighted by their share of predicted tokens, so the gradient is that of the
        whole batch's token mean.
        """
        input_ids, attention_mask = pretrain["input_ids"], pretrain["attention_mask"]
        size = self.micro_batch_size or len(input_ids)
        targets = (attention_mask[:, 1:] * attention_mask[:, :-1]).sum(-1).float()  # predicted tokens per row
        total_targets = targets.sum().clamp(min=1)
        nll_total = 0.0
        for start in range(0, len(input_ids), size):
            rows = slice(start, start + size)
            nll = sequence_nll(self.policy, input_ids[rows], attention_mask[rows])
            weight = targets[rows].sum() / total_targets
            self._backward(self.objective.needs.pretrain_coef * nll * weight, closes_step=start + size >= len(input_ids))
            nll_total += float(nll.detach() * weight)
        return nll_total

    def training_step(self, batch: Any, batch_idx: int) -> Optional[dict[str, Rollout]]:
        """One batch: an offline objective's optimizer step, or one rollout batch of an online objective.

        Online, with the :class:`~rlhf_lightning.rollout.Samples` the Rollout callback put in
        ``batch["samples"]``:

        1. ``ln π_t`` of the samples: from a no-grad policy pass, or, when the update is one optimizer
           step over all rows in one forward (:meth:`takes_old_logprobs_from_update`), from that forward,
           which is kept (with grad) for step 4;
        2. the :class:`~rlhf_lightning.rollout.Rollout`: ``r̃ = r − γ·(ln π_t − ln π_ref)`` and its metrics;
        3. ``objective.prepare`` once (advantages, pair selection; no grad);
        4. ``inner_epochs`` passes over ``num_minibatches`` minibatches: forward, loss, backward, clip,
           optimizer and scheduler step;
        5. tell the generation engine that the weights changed, and log the step.

        Returns ``{"rollout": rollout}`` online (callbacks get it as ``outputs`` in ``on_train_batch_end``).
        """
        if not self.objective.needs.rollout:
            return self._offline_step(batch)
        samples, pretrain = self._online_inputs(batch)
        start = time.perf_counter()
        # 1. ln π_t
        first_forward: Optional[PolicyForward] = None
        if self.takes_old_logprobs_from_update(len(samples)):
            first_forward = self._forward(samples, with_entropy=True)
            logprobs, outputs = first_forward
            old_logprobs, entropy = logprobs.detach(), outputs["entropy"].detach()
            if not self.objective.needs.entropy:
                first_forward = (logprobs, {k: v for k, v in outputs.items() if k != "entropy"})
        else:
            old_logprobs, entropy = self.rollout_logprobs(samples)
        # 2. shaped rewards
        require_finite("reward", samples.rewards, self._batch_number, self.reduce_sum)
        rollout = samples.with_policy_logprobs(old_logprobs, entropy)
        require_finite("shaped reward", rollout.shaped_rewards, self._batch_number, self.reduce_sum)
        self._observe_divergence(rollout)
        # 3. prepare
        with torch.no_grad():
            prepared = self.objective.prepare(rollout, self.reduce_sum)
        if prepared.input_ids is not rollout.input_ids:  # prepare kept other rows: the first forward does not fit
            first_forward = None
        # 4. updates
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        totals: dict[str, float] = defaultdict(float)
        updates = 0
        for _ in range(self.objective.inner_epochs):
            for minibatch in prepared.minibatches(self.objective.num_minibatches):
                for key, value in self._backward_minibatch(minibatch, pretrain, first_forward).items():
                    totals[key] += value
                first_forward = None  # one step only: later minibatches need a fresh forward
                self._optimizer_step(optimizer, scheduler)
                updates += 1
        # 5. engine weights, bookkeeping and logging
        self.generator.sync_weights(self.policy)
        update_seconds = time.perf_counter() - start
        busy = update_seconds + prepared.metrics.get("time/rollout_seconds", 0.0)
        self._samples_generated += len(samples)
        self._rollout_batches += 1
        self._busy_seconds += busy
        logged = {key: value / updates for key, value in totals.items()}
        logged.update(prepared.metrics)
        logged["kl/coef"] = samples.kl_coef
        logged["time/update_seconds"] = update_seconds
        logged["perf/samples_per_second"] = len(samples) / max(busy, 1e-9)
        logged["train/lr"] = scheduler.get_last_lr()[0]
        logged["train/rollouts"] = float(batch_idx + 1)
        self._note_train_loss(logged)
        log_step_metrics(self, logged, progress_bar={"reward": "reward/raw"})
        return {"rollout": rollout}

    def _online_inputs(self, batch: Any) -> tuple[Samples, Optional[dict]]:
        """The batch's samples (from the Rollout callback) and, for PPO-ptx, its pretraining text."""
        samples = batch.get("samples") if isinstance(batch, dict) else None
        name = type(self.objective).__name__
        if not isinstance(samples, Samples):
            raise RecipeError("rollout", f"objective {name} trains on rollouts, but the batch has none",
                              "keep the top-level rollout: key (class_path: rlhf_lightning.callbacks.Rollout or a "
                              "subclass), which the rlhf-lightning CLI adds to the trainer")
        coef = self.objective.needs.pretrain_coef
        if coef <= 0:
            return samples, None
        if batch.get("pretrain") is None:  # the data module attaches batch["pretrain"] from pretrain_file
            raise RecipeError("data.init_args.pretrain_file",
                              f"objective {name} has a pretraining LM loss (weight {coef}), but the training batches "
                              "carry no pretraining text",
                              "set data.init_args.pretrain_file to a file of pretraining/SFT text "
                              "(column data.init_args.pretrain_column), or set ptx_coef to 0")
        return samples, batch["pretrain"]

    # ------------------------------------------------------------------ run bookkeeping
    def _note_train_loss(self, metrics: dict) -> None:
        """Keep the step's loss (the optimised total, ``loss/total`` or the objective's ``loss/<name>``) for the
        summary's ``train_loss``."""
        key = main_loss_key(metrics)
        if key is not None:
            self.summary["train_loss"] = round(float(metrics[key]), 4)

    def _train_seconds(self) -> float:
        """Training time of the whole run: this process's, and a resumed run's before its checkpoint."""
        return self._seconds_before_resume + (time.perf_counter() - self._fit_started if self._fit_started else 0.0)

    def on_train_end(self) -> None:
        self.summary["train_seconds"] = round(self._train_seconds(), 2)
        # online: rollout batches and generated samples; offline: data batches and the rows (sequences) trained on
        batches, rows, rate = (("rollout_batches", "samples_generated", "samples_per_second") if self.objective.needs.rollout
                               else ("train_batches", "train_rows", "rows_per_second"))
        self.summary[rate] = round(self._samples_generated / max(self._busy_seconds, 1e-9), 2)
        self.summary[rows] = self._samples_generated
        self.summary[batches] = self._rollout_batches
        self.summary["seconds_per_batch"] = round(self._busy_seconds / max(self._rollout_batches, 1), 4)
        self.summary["peak_memory_mb"] = round(peak_memory_mb(self.device), 1)

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero:
            self.write_summary()

    def write_summary(self) -> Path:
        """Write ``<default_root_dir>/summary.json`` atomically."""
        path = Path(self.trainer.default_root_dir) / "summary.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"objective": self.objective.name, **self.summary}
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
        os.replace(tmp, path)
        return path

    def export(self, directory: str | os.PathLike, merge_lora: bool = True) -> Optional[Path]:
        """Save the policy as a Hugging Face directory that ``AutoModelForCausalLM.from_pretrained`` loads.

        Every process calls it: sharded weights are gathered (one tensor at a time, to rank 0's CPU memory)
        and written by rank 0 in the dtype they were loaded in; other ranks return ``None``. The directory is
        written as ``<name>.partial`` and renamed when complete, so a crash or a full disk never leaves a
        half-written export (nor removes the previous one).
        """
        writer = self._trainer is None or self.trainer.is_global_zero
        target = Path(directory)
        partial = target.with_name(target.name + ".partial")  # put in place whole, or not at all
        if writer:
            remove_path(partial)
        try:
            if is_sharded(self.policy) or is_partitioned(self.policy):
                save_sharded_hf_directory(self.policy, self.tokenizer, partial, merge_lora=merge_lora,
                                          dtype=self._export_dtype, writer=writer)
            elif writer:
                save_hf_directory(self.policy, self.tokenizer, partial, merge_lora=merge_lora)
        except BaseException as error:
            if writer:
                remove_path(partial)
            cause = os_error_in(error) if isinstance(error, Exception) else None
            if cause is not None:
                raise OutputNotWritten(partial, cause, kept=target if target.exists() else None) from None
            raise
        if not writer:
            return None
        give_user_file_mode(partial)
        replace_path(partial, target)
        return target

    # ------------------------------------------------------------------ checkpoints
    def reloaded_from_path(self) -> set[str]:
        """State keys that a checkpoint leaves out because loading the model gives them back: the frozen
        reference copy, and the frozen base weights under LoRA (only the adapter and the optimizer state are
        stored)."""
        keys = {key for key in self.state_dict() if key.startswith("reference.")}
        frozen = self.named_parameters(remove_duplicate=False)  # tied weights (lm_head = embeddings) under each name
        return keys | {name for name, parameter in frozen if not parameter.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        for key in self.reloaded_from_path() & set(state):
            del state[key]
        checkpoint["run_counters"] = {"samples_generated": self._samples_generated,
                                      "rollout_batches": self._rollout_batches, "busy_seconds": self._busy_seconds,
                                      "train_seconds": self._train_seconds()}
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "python": list(random.getstate()[1]),
            "python_version": random.getstate()[0],
            "python_gauss": random.getstate()[2],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None and self.trainer.state.fn == "fit":
            trainer = self.trainer
            problem = nothing_left_to_train(checkpoint, trainer.max_epochs, trainer.max_steps,
                                            trainer.limit_train_batches)
            if problem is not None:
                raise problem
        state = checkpoint.setdefault("state_dict", {})
        saved_here = bool(state) and not self._uses_deepspeed  # DeepSpeed keeps the weights in its own files
        current = self.state_dict()
        for key in self.reloaded_from_path():  # as loaded from the model's path: the same weights
            state.setdefault(key, current[key])
        if saved_here and not (is_sharded(self.policy) or is_partitioned(self.policy)):
            problem = state_problem(state, current, getattr(self._trainer, "ckpt_path", None))
            if problem is not None:
                raise problem
        counters = checkpoint.get("run_counters")
        if counters:  # the summary counts the whole run, not only the part after the resume
            self._samples_generated = int(counters["samples_generated"])
            self._rollout_batches = int(counters["rollout_batches"])
            self._busy_seconds = float(counters["busy_seconds"])
            self._seconds_before_resume = float(counters.get("train_seconds", 0.0))
        rng = checkpoint.get("rng_states")
        if rng:
            torch.set_rng_state(rng["torch"])
            random.setstate((rng["python_version"], tuple(rng["python"]), rng["python_gauss"]))
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
