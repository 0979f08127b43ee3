"""``RLHFModule``: owns the models, runs the objective on each rollout, logs."""

from __future__ import annotations

import json
import os
import random
import time
import warnings
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from rlhf_lightning.batches import SequenceBatch
from rlhf_lightning.critic import load_value_model, sequence_scores, token_values
from rlhf_lightning.reference_cache import ReferenceCache
from rlhf_lightning.errors import RecipeError
from rlhf_lightning.logprobs import response_logprobs, sequence_nll
from rlhf_lightning.models import (ModelConfig, disable_dropout, freeze, load_causal_lm, load_tokenizer,
                                   save_hf_directory)
from rlhf_lightning.objectives.base import Objective
from rlhf_lightning.rewards import RewardModel, RewardSource
from rlhf_lightning.rollout import Rollout
from rlhf_lightning.step_metrics import log_step_metrics

# Known, harmless Lightning warnings: the frozen reference is in eval mode on purpose, and checkpoints
# written after an optimizer step are what a resumed run needs.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
warnings.filterwarnings("ignore", message=r"Using ModelCheckpoint with manual optimization")

LRSchedule = Literal["constant", "linear", "cosine"]
_LIVE = "_live_"  # rollout.extras keys of a policy forward that training_step ran before prepare()


def _take_live_forward(extras: dict[str, Tensor]) -> dict[str, Tensor]:
    """Remove and return the ``_LIVE`` entries of ``extras`` (``logprobs``, ``entropy``; names unprefixed)."""
    return {key.removeprefix(_LIVE): extras.pop(key) for key in list(extras) if key.startswith(_LIVE)}


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA peak allocation on a GPU, else the CPU peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class RLHFModule(LightningModule):
    """Policy, frozen reference and reward source, trained by a swappable :class:`Objective`.

    Models are loaded in :meth:`configure_model` (after the data module's ``prepare_data``, inside
    the strategy's context). Optimisation is manual: each rollout batch gives
    ``objective.inner_epochs × objective.num_minibatches`` optimizer steps, so ``trainer.max_steps``
    counts optimizer steps while ``max_epochs``/``limit_train_batches`` count rollout batches.

    Args:
        policy: the model to train (HF directory, optional LoRA/QLoRA).
        objective: the loss, e.g. ``rlhf_lightning.objectives.REBEL``.
        reward: reward source for online objectives (reward model, Python function, task judge).
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
            (detached) instead of a separate no-grad pass at rollout time. Before the step ``π_θ = π_t``,
            so the numbers are the same and each batch costs one policy forward less. ``false`` always
            runs the separate pass.
    """

    def __init__(
        self,
        policy: ModelConfig,
        objective: Objective,
        reward: Optional[RewardSource] = None,
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
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        if not lr > 0:
            raise RecipeError("model.init_args.lr", f"must be > 0, got {lr}", "e.g. 1e-5")
        if micro_batch_size is not None and micro_batch_size < 1:
            raise RecipeError("model.init_args.micro_batch_size", f"must be ≥ 1, got {micro_batch_size}")
        group = objective.samples_per_prompt
        if micro_batch_size is not None and micro_batch_size % group:
            raise RecipeError("model.init_args.micro_batch_size",
                              f"{micro_batch_size} rows do not hold whole groups of {group} samples per prompt",
                              f"use a multiple of {group} (samples_per_prompt of {type(objective).__name__})")
        self.policy_config = policy
        self.reference_config = reference
        self.critic_config = critic
        self.critic_lr = critic_lr
        self.objective = objective
        self.reward = reward
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_schedule = lr_schedule
        self.warmup_steps = warmup_steps
        self.max_grad_norm = max_grad_norm
        self.micro_batch_size = micro_batch_size
        self.precompute_reference = precompute_reference
        self.old_logprobs_from_update = old_logprobs_from_update
        self._reference_cache: Optional[ReferenceCache] = None
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

    # ------------------------------------------------------------------ models
    def configure_model(self) -> None:
        if self.policy is not None:
            return
        field = "model.init_args.policy"
        self.tokenizer = load_tokenizer(self.policy_config.tokenizer or self.policy_config.path,
                                        f"{field}.path", self.policy_config.trust_remote_code)
        if self.objective.policy_head == "scalar":  # a reward model: one output on the last token
            policy = load_value_model(self.policy_config, field)
            if policy.config.pad_token_id is None:
                policy.config.pad_token_id = self.tokenizer.pad_token_id
        else:
            policy = load_causal_lm(self.policy_config, field)
        disable_dropout(policy)
        self.policy = policy.train()
        wants_reference = self.objective.needs_reference or self.reference_for_evaluation
        if wants_reference and self.objective.policy_head == "causal_lm" and not self._reference_is_disabled_adapter:
            ref_config = self.reference_config or ModelConfig(
                path=self.policy_config.path, dtype=self.policy_config.dtype,
                trust_remote_code=self.policy_config.trust_remote_code)
            self.reference = freeze(load_causal_lm(ref_config, "model.init_args.reference"))
        if self.objective.needs_critic:
            self.critic = load_value_model(self._critic_config(), "model.init_args.critic")
            disable_dropout(self.critic)
            self.critic.train()
        if self.objective.needs_rollout:
            if self.reward is None:
                raise RecipeError("model.init_args.reward",
                                  f"objective {type(self.objective).__name__} learns from rewards, but no reward source is set",
                                  "set model.init_args.reward, e.g. class_path: rlhf_lightning.rewards.RewardModel")
            self.reward.setup(self.trainer.strategy.root_device if self._trainer else torch.device("cpu"))

    def _critic_config(self) -> ModelConfig:
        if self.critic_config is not None:
            return self.critic_config
        if isinstance(self.reward, RewardModel):
            return ModelConfig(path=self.reward.path, dtype=self.policy_config.dtype)
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
    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor, use_reference: bool = False,
                 **generation_kwargs: Any) -> Tensor:
        """Sample responses for left-padded prompts; returns the response block ``[N, R]`` (pad after EOS)."""
        context = self._reference_model() if use_reference else nullcontext(self.policy)
        with context as model:
            was_training = model.training
            model.eval()
            sequences = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                       pad_token_id=self.tokenizer.pad_token_id,
                                       eos_token_id=self.tokenizer.eos_token_id, **generation_kwargs)
            model.train(was_training)
        return sequences[:, input_ids.shape[1]:]

    def policy_logprobs(self, input_ids: Tensor, attention_mask: Tensor, prompt_length: int,
                        temperature: float = 1.0, with_entropy: bool = False,
                        entropy_grad: bool = True) -> tuple[Tensor, Optional[Tensor]]:
        """Per-token ``ln π_θ`` of the response block (with grad when grad is enabled)."""
        return response_logprobs(self.policy, input_ids, attention_mask, prompt_length, temperature, with_entropy,
                                 entropy_grad)

    def takes_old_logprobs_from_update(self, num_rows: int) -> bool:
        """Whether the update of a rollout of ``num_rows`` rows is a single forward over all of them before
        any parameter change, so that the rollout callback can leave ``ln π_t`` to it
        (see ``old_logprobs_from_update``)."""
        objective = self.objective
        return (self.old_logprobs_from_update and objective.policy_head == "causal_lm"
                and objective.inner_epochs == 1 and objective.num_minibatches == 1
                and not objective.needs_critic and not objective.selects_rollout_rows
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
        optimizer = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        total = max(1, self._total_optimizer_steps())
        name = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[self.lr_schedule]
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=self.warmup_steps, num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _backward_minibatch(self, minibatch: Rollout, pretrain: Optional[dict] = None) -> dict[str, float]:
        """Forward/backward over one minibatch (split into micro-batches); returns its metrics.

        With ``pretrain`` (PPO-ptx), the policy's LM loss on that batch is added, × ``objective.ptx_coef``.
        """
        chunks = minibatch.split(self.micro_batch_size) if self.micro_batch_size else [minibatch]
        metrics: dict[str, float] = defaultdict(float)
        for chunk in chunks:
            logprobs, outputs = self._forward(chunk)
            loss, chunk_metrics = self.objective.loss(logprobs, chunk, **outputs)
            weight = self.objective.chunk_weight(chunk, minibatch) if len(chunks) > 1 else 1.0
            self.manual_backward(loss * weight)
            for key, value in chunk_metrics.items():
                metrics[key] += float(value) * weight
        # ---- pretraining mix (InstructGPT PPO-ptx): + ptx_coef · token NLL on pretraining text ----
        if pretrain is not None:
            ptx = self._backward_ptx(pretrain)
            metrics["loss/ptx"] = ptx
            metrics["loss/total"] += self.objective.ptx_coef * ptx
        # ---- end pretraining mix ----
        return metrics

    def _forward_for_rollout(self, rollout: Rollout) -> None:
        """The update's policy forward, run before ``prepare``: its detached log-probs become ``ln π_t``
        (with the KL shaping and metrics that depend on them), and the live ones wait in ``rollout.extras``
        for :meth:`_forward`."""
        logprobs, entropy = self.policy_logprobs(rollout.input_ids, rollout.attention_mask, rollout.prompt_length,
                                                 rollout.temperature, with_entropy=True,
                                                 entropy_grad=self.objective.needs_entropy)
        rollout.extras[_LIVE + "logprobs"] = logprobs
        if self.objective.needs_entropy:
            rollout.extras[_LIVE + "entropy"] = entropy
        rollout.attach_policy_logprobs(logprobs.detach(), entropy.detach())

    def _forward(self, chunk: Any) -> tuple[Optional[Tensor], dict[str, Tensor]]:
        """What the objective's loss needs for one chunk: policy log-probs (or reward-model scores),
        entropy and critic values, all with grad. A forward that ``training_step`` already ran over these
        rows (kept in ``chunk.extras``, which row selection carries along) is used, and dropped, instead."""
        live = _take_live_forward(chunk.extras)
        if "logprobs" in live:
            return live.pop("logprobs"), live
        outputs: dict[str, Tensor] = {}
        if self.objective.policy_head == "scalar":
            outputs["scores"] = sequence_scores(self.policy, chunk.input_ids, chunk.attention_mask, chunk.prompt_length)
            return None, outputs
        logprobs, entropy = self.policy_logprobs(chunk.input_ids, chunk.attention_mask, chunk.prompt_length,
                                                 getattr(chunk, "temperature", 1.0),
                                                 with_entropy=self.objective.needs_entropy)
        if self.objective.needs_entropy:
            outputs["entropy"] = entropy
        if self.objective.needs_critic:
            outputs["values"] = self.critic_values(chunk.input_ids, chunk.attention_mask, chunk.prompt_length)
        return logprobs, outputs

    # ------------------------------------------------------------------ offline objectives
    def _with_reference(self, batch: SequenceBatch) -> SequenceBatch:
        """Fill ``batch.ref_logprobs`` (from the precomputed cache, or live) when the objective needs them."""
        if not self.objective.needs_reference or batch.ref_logprobs is not None:
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
        if self.max_grad_norm:
            self.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        seconds = time.perf_counter() - start
        self._busy_seconds += seconds
        self._samples_generated += len(batch)
        self._rollout_batches += 1
        metrics["train/lr"] = scheduler.get_last_lr()[0]
        metrics["perf/samples_per_second"] = len(batch) / max(seconds, 1e-9)
        log_step_metrics(self, metrics)

    @torch.no_grad()
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if self.objective.needs_rollout or not isinstance(batch, SequenceBatch):
            return
        logprobs, outputs = self._forward(self._with_reference(batch))
        _, metrics = self.objective.loss(logprobs, batch, **outputs)
        self.log_dict({f"val/{key}": float(value) for key, value in metrics.items()}, on_step=False, on_epoch=True,
                      batch_size=batch.num_prompts, sync_dist=self.trainer.world_size > 1)

    def on_validation_epoch_end(self) -> None:
        for metric, key in self.objective.summary_metrics.items():
            value = self.trainer.callback_metrics.get(f"val/{metric}")
            if value is not None:
                self.summary[key] = round(float(value), 4)

    def on_train_start(self) -> None:
        self._fit_started = time.perf_counter()
        if self.precompute_reference and self.objective.needs_reference and not self.objective.needs_rollout:
            self._reference_cache = ReferenceCache.build(self, self.trainer.datamodule)
            if self.reference is not None and not self.reference_for_evaluation:  # no longer needed: free it
                self.reference = None

    def _backward_ptx(self, pretrain: dict) -> float:
        """Backward of ``ptx_coef × (mean token NLL of the policy on the pretraining batch)``; returns the NLL.

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
            self.manual_backward(self.objective.ptx_coef * nll * weight)
            nll_total += float(nll.detach() * weight)
        return nll_total

    def training_step(self, batch: Any, batch_idx: int) -> None:
        if not self.objective.needs_rollout:
            return self._offline_step(batch)
        rollout = batch.get("rollout") if isinstance(batch, dict) else None
        if rollout is None:
            raise RecipeError("trainer.callbacks",
                              f"objective {type(self.objective).__name__} trains on rollouts, but the batch has none",
                              "add class_path: rlhf_lightning.callbacks.Rollout to trainer.callbacks")
        # ---- pretraining mix (PPO-ptx): the data module attaches batch["pretrain"] ----
        pretrain = None
        if getattr(self.objective, "ptx_coef", 0.0) > 0:
            pretrain = batch.get("pretrain")
            if pretrain is None:
                raise RecipeError("data.init_args.pretrain_file",
                                  f"objective {type(self.objective).__name__} has ptx_coef = "
                                  f"{self.objective.ptx_coef} (a pretraining LM loss), but the training batches "
                                  "carry no pretraining text",
                                  "set data.init_args.pretrain_file to a file of pretraining/SFT text "
                                  "(column data.init_args.pretrain_column), or set ptx_coef to 0")
        # ---- end pretraining mix ----
        start = time.perf_counter()
        if rollout.old_logprobs is None:  # the Rollout callback left ln π_t to this update's forward
            self._forward_for_rollout(rollout)
        with torch.no_grad():
            rollout = self.objective.prepare(rollout, self.reduce_sum)  # advantages, pair selection, ...
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        totals: dict[str, float] = defaultdict(float)
        updates = 0
        for _ in range(self.objective.inner_epochs):
            for minibatch in rollout.minibatches(self.objective.num_minibatches):
                for key, value in self._backward_minibatch(minibatch, pretrain).items():
                    totals[key] += value
                if self.max_grad_norm:
                    self.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm,
                                        gradient_clip_algorithm="norm")
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                updates += 1
        for part in (batch["rollout"], rollout):  # the update's graph is spent: keep no reference to it
            _take_live_forward(part.extras)
        update_seconds = time.perf_counter() - start
        busy = update_seconds + rollout.metrics.get("time/rollout_seconds", 0.0)
        self._samples_generated += len(rollout)
        self._rollout_batches += 1
        self._busy_seconds += busy
        logged = {key: value / updates for key, value in totals.items()}
        logged.update(rollout.metrics)
        logged["kl/coef"] = rollout.kl_coef
        logged["time/update_seconds"] = update_seconds
        logged["perf/samples_per_second"] = len(rollout) / max(busy, 1e-9)
        logged["train/lr"] = scheduler.get_last_lr()[0]
        logged["train/rollouts"] = float(batch_idx + 1)
        log_step_metrics(self, logged, progress_bar={"reward": "reward/raw"})

    # ------------------------------------------------------------------ run bookkeeping
    def on_train_end(self) -> None:
        self.summary["train_seconds"] = round(time.perf_counter() - self._fit_started, 2)
        self.summary["samples_per_second"] = round(self._samples_generated / max(self._busy_seconds, 1e-9), 2)
        self.summary["samples_generated"] = self._samples_generated
        self.summary["rollout_batches"] = self._rollout_batches
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

    def export(self, directory: str | os.PathLike, merge_lora: bool = True) -> Path:
        """Save the policy as a Hugging Face directory that ``AutoModelForCausalLM.from_pretrained`` loads."""
        return save_hf_directory(self.policy, self.tokenizer, directory, merge_lora=merge_lora)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("reference.")]:
            del state[key]  # frozen copy: reloaded from its path, not stored in every checkpoint
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "python": list(random.getstate()[1]),
            "python_version": random.getstate()[0],
            "python_gauss": random.getstate()[2],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.reference is not None:
            state = checkpoint.setdefault("state_dict", {})
            for key, value in self.reference.state_dict().items():
                state.setdefault(f"reference.{key}", value)
        rng = checkpoint.get("rng_states")
        if rng:
            torch.set_rng_state(rng["torch"])
            random.setstate((rng["python_version"], tuple(rng["python"]), rng["python_gauss"]))
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
