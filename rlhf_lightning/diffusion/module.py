"""``DiffusionRLHFModule``: :class:`~rlhf_lightning.RLHFModule` with a diffusion policy (a ``diffusers`` UNet).

Everything the text path does after sampling is unchanged (the objective's ``prepare`` and ``loss``, minibatches,
micro-batches, gradient clipping and the finiteness guards, the optimizer and schedule, checkpoints, logging):
the rows of a rollout batch are denoising trajectories, their "tokens" the T sampler steps, and the per-token
log-probs the per-step Gaussian log-densities of :mod:`rlhf_lightning.diffusion.ddim`. What changes is where the
models come from (a UNet and its scheduler instead of a causal LM and a tokenizer) and how log-probs are computed:

    ln π_θ(τ | c) = Σ_k ln N(x_{k+1}; μ_θ(x_k, t_k, c), σ_k² I)

recomputed from the stored trajectory with gradients (:meth:`_forward`); ``ln π_t`` is the value recorded while
sampling, which equals a recomputation under the sampling weights (tests/diffusion/test_module.py).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from rlhf_lightning.checkpoint_io import OutputNotWritten, install as install_safe_checkpoint_io, os_error_in
from rlhf_lightning.diffusion.ddim import (DDIMSampler, LCMSampler, Sampler, Trajectory, check_ddim_eta,
                                           trajectory_log_probs)
from rlhf_lightning.diffusion.policy import (DiffusionPolicyConfig, Denoiser, load_scheduler, load_text_parts,
                                             load_unet, resolution_problem, sample_size, text_component_problems,
                                             text_conditional, unet_config, unet_config_at)
from rlhf_lightning.diffusion.rewards import ImageReward, probe_problem
from rlhf_lightning.diffusion.schedule import ddim_schedule
from rlhf_lightning.distributed import FSDP2Strategy, strategy_problems
from rlhf_lightning.distributed.checkpoints import remove_path, replace_path
from rlhf_lightning.errors import RecipeError, raise_all
from rlhf_lightning.guards import DivergenceLimits
from rlhf_lightning.models import freeze
from rlhf_lightning.module import LRSchedule, PolicyForward, RLHFModule
from rlhf_lightning.objectives.base import Objective
from rlhf_lightning.rollout import Samples

FIELD = "model.init_args.policy"


def is_sharding_strategy(strategy) -> bool:
    """FSDP (Lightning's or the library's FSDP2) and DeepSpeed: strategies that shard or partition the weights."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    return isinstance(strategy, (FSDPStrategy, DeepSpeedStrategy, FSDP2Strategy))


class DiffusionRLHFModule(RLHFModule):
    """A diffusion policy, its frozen reference and an image reward, trained by a swappable online
    :class:`~rlhf_lightning.objectives.base.Objective` (REBEL, GRPO as the paper's clipped baseline, RLOO,
    REINFORCE, online DPO, ...) on trajectories from :class:`~rlhf_lightning.callbacks.ImageRollout`.

    Args:
        policy: the UNet and scheduler (:class:`~rlhf_lightning.diffusion.DiffusionPolicyConfig`), LoRA optional.
        objective: the loss; online, without a critic (a UNet has no value head) or data-set responses.
        reward: the image reward (:class:`~rlhf_lightning.diffusion.ImageReward`), e.g.
            ``rlhf_lightning.diffusion.LearnedImageReward`` or ``rlhf_lightning.diffusion.ImageFunctionReward``.
        reference: the frozen reference ``π_ref`` (default: the policy's starting weights; under LoRA the UNet
            with the adapter disabled).
        lr, weight_decay, lr_schedule, warmup_steps, max_grad_norm, micro_batch_size: as
            :class:`~rlhf_lightning.RLHFModule`.
        divergence: as :class:`~rlhf_lightning.RLHFModule`, but without a KL limit by default: a trajectory's KL
            sums over every pixel (or latent element) of every step, so the text path's 100 nats is no measure here;
            set ``max_kl`` in nats per trajectory to have one.
    """

    def __init__(self, policy: DiffusionPolicyConfig, objective: Objective, reward: Optional[ImageReward] = None,
                 reference: Optional[DiffusionPolicyConfig] = None, lr: float = 1e-4, weight_decay: float = 0.0,
                 lr_schedule: LRSchedule = "constant", warmup_steps: int = 0, max_grad_norm: Optional[float] = 5.0,
                 micro_batch_size: Optional[int] = None, divergence: Optional[DivergenceLimits] = None) -> None:
        super().__init__(policy=policy, objective=objective, reward=None, reference=reference, lr=lr,
                         weight_decay=weight_decay, lr_schedule=lr_schedule, warmup_steps=warmup_steps,
                         max_grad_norm=max_grad_norm, micro_batch_size=micro_batch_size,
                         old_logprobs_from_update=False,
                         divergence=divergence if divergence is not None else DivergenceLimits(max_kl=None))
        self.reward = reward
        self.sampler_kind: Optional[str] = None  # set by the ImageRollout callback (use_sampler)
        self.eta, self.guidance_scale = 1.0, 1.0
        self.num_steps: Optional[int] = None
        self.sampler: Optional[Sampler] = None
        self.timesteps: list[int] = []
        self.transitions: tuple[list[int], list[int]] = ([], [])
        self.text_encoder = self.vae = None  # text-conditional pipelines (frozen)
        self._prompt_tokenizer = None
        self._embeddings: dict[str, Tensor] = {}
        self.alphas_cumprod: Optional[Tensor] = None
        self._unet_values: dict[str, Any] = {}
        self._scheduler = None

    # ------------------------------------------------------------------ checks before weights load
    def use_sampler(self, eta: float, num_steps: int, sampler: str = "ddim", guidance_scale: float = 1.0) -> None:
        """Sample with the ImageRollout's sampler: stochastic DDIM with ``eta`` or the LCM multistep sampler, over
        ``num_steps`` steps, at classifier-free guidance ``guidance_scale`` (text-conditional pipelines)."""
        if sampler == "ddim":
            check_ddim_eta(eta, "rollout.init_args.eta")
        self.sampler_kind, self.eta, self.num_steps = sampler, float(eta), num_steps
        self.guidance_scale = float(guidance_scale)

    def objective_problems(self) -> list[RecipeError]:
        """What of the objective a diffusion policy cannot give: offline data, a critic, data-set responses, an
        LM loss, reward-model scores."""
        needs, name = self.objective.needs, type(self.objective).__name__
        field = "model.init_args.objective"
        checks = [(needs.rollout, f"{name} trains on a data set of sequences; a diffusion policy trains on its own "
                   "samples", "use an online objective: REBEL, GRPO (the paper's clipped baseline), RLOO, REINFORCE"),
                  (not needs.critic, f"{name} needs a value model (critic), which a UNet policy does not have",
                   "use GRPO (PPO's clipped objective with a group baseline and no critic: the baseline of the REBEL "
                   "paper's image experiment) or REBEL"),
                  (not needs.dataset_responses_per_prompt, f"{name} pairs samples with data-set responses; image "
                   "prompts have none", "use pairs: sampled"),
                  (needs.pretrain_coef <= 0, f"{name} adds a pretraining LM loss; a UNet has none", "set ptx_coef: 0"),
                  (needs.head == "causal_lm", f"{name} trains a reward model, not a policy", "use an online objective")]
        return [RecipeError(field, problem, fix) for ok, problem, fix in checks if not ok]

    def setup(self, stage: str) -> None:
        """Checks before any weights load: the objective, the sampler, the UNet's config and resolution, the
        scheduler (that every step of the sampler is stochastic)."""
        if self.policy is not None:
            return
        if self._trainer is not None:
            raise_all(strategy_problems(self.trainer.strategy, str(self.trainer.precision)))
            if is_sharding_strategy(self.trainer.strategy):
                raise RecipeError("trainer.strategy", f"{type(self.trainer.strategy).__name__} shards the weights; "
                                  "diffusion policies are tested on one device and under DDP only",
                                  "use strategy: ddp (each GPU holds the UNet; LoRA keeps the optimizer state small)")
            install_safe_checkpoint_io(self.trainer.strategy)
        if self.sampler_kind is None:  # ImageRollout.setup (which runs first) sets the sampler; a text Rollout does not
            raise RecipeError("rollout", "a DiffusionRLHFModule samples images, but the rollout is not an ImageRollout "
                              "(no sampler is set)", "set rollout.class_path: rlhf_lightning.callbacks.ImageRollout")
        raise_all(self.policy_config.problems(FIELD) + self.objective_problems())
        if self.reward is None:
            raise RecipeError("model.init_args.reward", f"objective {type(self.objective).__name__} learns from "
                              "rewards, but no image reward is set",
                              "set model.init_args.reward, e.g. class_path: rlhf_lightning.diffusion.LearnedImageReward")
        if not isinstance(self.reward, ImageReward):
            raise RecipeError("model.init_args.reward", f"{type(self.reward).__name__} scores text; a diffusion "
                              "policy needs an image reward", "use rlhf_lightning.diffusion.LearnedImageReward or "
                              "ImageFunctionReward")
        self._unet_values = unet_config(self.policy_config, FIELD)
        if text_conditional(self._unet_values):
            raise_all(text_component_problems(self.policy_config, FIELD))
        problem = resolution_problem(self.policy_config, self._unet_values, FIELD)
        if problem is not None:
            raise problem
        if self.reference_config is not None:
            reference_values = unet_config(self.reference_config, "model.init_args.reference")
            for key in ("in_channels", "out_channels", "num_class_embeds", "cross_attention_dim"):
                if reference_values.get(key) != self._unet_values.get(key):
                    raise RecipeError("model.init_args.reference.path", f"the reference UNet's {key} is "
                                      f"{reference_values.get(key)}, the policy's {self._unet_values.get(key)}: their "
                                      "log-probs are not of the same samples", "use the policy's starting checkpoint")
        self._scheduler = load_scheduler(self.policy_config, FIELD, self.sampler_kind)
        lcm = self.sampler_kind == "lcm"
        self.timesteps, self.alphas_cumprod = ddim_schedule(self._scheduler, self.num_steps, "rollout.init_args.num_steps",
                                                            final_step_deterministic=lcm)
        self.sampler = (LCMSampler(float(self._scheduler.config.get("timestep_scaling", 10.0))) if lcm
                        else DDIMSampler(self.eta))
        self.transitions = self.sampler.transitions(self.timesteps, self.alphas_cumprod)

    @property
    def resolution(self) -> int:
        return self.policy_config.resolution or sample_size(self._unet_values)

    @property
    def channels(self) -> int:
        return int(self._unet_values.get("in_channels", 3))

    # ------------------------------------------------------------------ models
    def configure_model(self) -> None:
        """The reward first (probed once on two noise images), then the UNet, the reference and the sampler."""
        if self.policy is not None:
            return
        if not self._unet_values:  # called without a trainer (tests): run the checks here
            self.setup("fit")
        device = self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
        self.reward.setup(device)
        num_classes = self._unet_values.get("num_class_embeds") or 1
        labels = torch.arange(2) % num_classes
        problem = probe_problem(self.reward, 3, self.image_size, labels, device)
        if problem is not None:
            raise problem
        if text_conditional(self._unet_values):
            self._prompt_tokenizer, encoder, vae = load_text_parts(self.policy_config)
            self.text_encoder, self.vae = encoder.to(device), vae.to(device)  # frozen by load_text_parts
        policy = load_unet(self.policy_config, FIELD)
        self.policy = policy.train()
        wants_reference = self.objective.needs.reference or self.reference_for_evaluation
        if wants_reference and not self._reference_is_disabled_adapter:
            if self.reference_config is None:
                base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
                self.reference = freeze(copy.deepcopy(base))
            else:
                self.reference = freeze(load_unet(self.reference_config, "model.init_args.reference"))
        self._export_dtype = next(self.policy.parameters()).dtype
        self.alphas_cumprod = self.alphas_cumprod.to(device)

    @property
    def uses_classifier_free_guidance(self) -> bool:
        """A text-conditional UNet without an LCM guidance input, at a guidance scale other than 1."""
        return (text_conditional(self._unet_values) and self._unet_values.get("time_cond_proj_dim") is None
                and self.guidance_scale != 1.0)

    @torch.no_grad()
    def _embed(self, prompts: list[str]) -> Tensor:
        """The frozen text encoder's last hidden states ``[N, S, D]`` of ``prompts`` (cached per prompt)."""
        missing = sorted({p for p in prompts if p not in self._embeddings})
        if missing:
            tokenizer = self._prompt_tokenizer
            limit = getattr(self.text_encoder.config, "max_position_embeddings", None) or tokenizer.model_max_length
            length = min(int(tokenizer.model_max_length), int(limit))
            encoded = tokenizer(missing, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
            hidden = self.text_encoder(encoded.input_ids.to(self.text_encoder.device)).last_hidden_state
            self._embeddings.update(zip(missing, hidden))
        return torch.stack([self._embeddings[p] for p in prompts])

    def condition(self, labels: Tensor, prompts: list[str]) -> Tensor:
        """What conditions the UNet on each prompt: its class id (an unconditional UNet ignores it), or for a
        text-conditional UNet the prompt's embedding ``[N, S, D]`` (``[N, 2, S, D]`` with the empty prompt's under
        classifier-free guidance)."""
        if not text_conditional(self._unet_values):
            return labels
        embedded = self._embed(list(prompts))
        if self.uses_classifier_free_guidance:
            return torch.stack([self._embed([""] * len(prompts)), embedded], dim=1)
        return embedded

    def denoiser(self, use_reference: bool = False) -> Denoiser:
        return Denoiser(self.reference if use_reference and self.reference is not None else self.policy,
                        self.guidance_scale)

    @property
    def image_size(self) -> int:
        """The side of the decoded images: the sample side, times the VAE's up-sampling for a latent model."""
        if not text_conditional(self._unet_values):
            return self.resolution
        vae = unet_config_at(self.policy_config, self.policy_config.vae_subfolder)
        return self.resolution * 2 ** (len(vae.get("block_out_channels", (0,))) - 1)

    def decode(self, samples: Tensor) -> Tensor:
        """Images ``[N, 3, H, W]`` in ``[-1, 1]`` from the sampler's final samples: clamped for a pixel-space UNet,
        through the frozen VAE (``latents / scaling_factor``) for a latent one."""
        if self.vae is None:
            return samples.float().clamp(-1.0, 1.0)
        with torch.no_grad():
            latents = samples.to(self.vae.dtype) / self.vae.config.scaling_factor
            return self.vae.decode(latents).sample.float().clamp(-1.0, 1.0)

    def trajectory_logprobs(self, latents: Tensor, condition: Tensor, use_reference: bool = False) -> Tensor:
        """``[N, T]`` per-step log-probs of stored trajectories under the policy (with grad when enabled) or the
        reference (no grad)."""
        starts, ends = self.transitions
        trajectory = Trajectory(latents, starts, ends, torch.empty(0))
        if not use_reference:
            return trajectory_log_probs(self.denoiser(), trajectory, condition, self.alphas_cumprod, self.sampler)
        with torch.no_grad(), self._reference_model() as model:
            return trajectory_log_probs(Denoiser(model, self.guidance_scale), trajectory, condition,
                                        self.alphas_cumprod, self.sampler)

    # ------------------------------------------------------------------ log-probs for the objective
    def rollout_logprobs(self, samples: Samples) -> tuple[Tensor, Optional[Tensor]]:
        """``ln π_t``: the per-step log-probs recorded while sampling (the sampling policy's own values, so no
        second pass), and the per-step Gaussian entropy ``½·d·(1 + ln 2πσ_k²)`` (the same for every row)."""
        return samples.extras["sampled_logprobs"], self.step_entropy(len(samples))

    def step_entropy(self, rows: int) -> Tensor:
        dims = self.channels * self.resolution ** 2
        zero = torch.zeros(1, device=self.alphas_cumprod.device)
        sigmas = torch.stack([torch.as_tensor(self.sampler.step(zero, zero, t, p, self.alphas_cumprod)[1]).reshape(())
                              for t, p in zip(*self.transitions)])
        entropy = 0.5 * dims * (1 + torch.log(2 * math.pi * sigmas.float() ** 2))
        return entropy[None].expand(rows, -1).to(self.device)

    def takes_old_logprobs_from_update(self, num_rows: int) -> bool:
        return False  # ln π_t is recorded while sampling: no pass to save

    def _forward(self, chunk: Any, with_entropy: bool = False) -> PolicyForward:
        logprobs = self.trajectory_logprobs(chunk.extras["latents"], chunk.extras.get("condition"))
        outputs = {"entropy": self.step_entropy(len(chunk))} if self.objective.needs.entropy or with_entropy else {}
        return logprobs, outputs

    def _observe_divergence(self, rollout) -> None:
        self._divergence_monitor.observe(self._batch_number, rollout.metrics["kl/ref"], None, 0)

    # ------------------------------------------------------------------ export
    def export(self, directory: str | Path, merge_lora: bool = True) -> Optional[Path]:
        """Save the trained UNet (LoRA merged unless ``merge_lora`` is false) and its scheduler as a pipeline
        directory (``unet/``, ``scheduler/``), written as ``<name>.partial`` and renamed when complete."""
        if self._trainer is not None and not self.trainer.is_global_zero:
            return None
        target = Path(directory)
        partial = target.with_name(target.name + ".partial")
        remove_path(partial)
        try:
            unet = self.policy
            if hasattr(unet, "merge_and_unload") and merge_lora:
                unet = copy.deepcopy(unet).merge_and_unload()
            unet.save_pretrained(partial / "unet", safe_serialization=True)
            self._scheduler.save_pretrained(partial / "scheduler")
            if self.vae is not None:  # the frozen parts, as loaded: the export is a whole pipeline
                self.text_encoder.save_pretrained(partial / self.policy_config.text_encoder_subfolder)
                self._prompt_tokenizer.save_pretrained(partial / self.policy_config.tokenizer_subfolder)
                self.vae.save_pretrained(partial / self.policy_config.vae_subfolder)
        except Exception as error:
            remove_path(partial)
            cause = os_error_in(error)
            if cause is not None:
                raise OutputNotWritten(partial, cause, kept=target if target.exists() else None) from None
            raise
        replace_path(partial, target)
        return target
