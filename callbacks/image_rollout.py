"""``ImageRollout``: sample denoising trajectories for each batch of image prompts and score the images."""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from typing import Literal

import torch
from lightning.pytorch import LightningModule, Trainer

from rlhf_lightning.callbacks.rollout import Rollout
from rlhf_lightning.diffusion.ddim import check_ddim_eta, sample_trajectory
from rlhf_lightning.diffusion.module import DiffusionRLHFModule
from rlhf_lightning.diffusion.rollout import trajectory_samples
from rlhf_lightning.errors import RecipeError, raise_all
from rlhf_lightning.guards import require_finite
from rlhf_lightning.rollout import Samples

FIELD = "rollout.init_args"
Normalization = Literal["none", "per_prompt"]
SamplerKind = Literal["ddim", "lcm"]


class PerPromptStats:
    """DDPO's per-prompt reward normalisation (Black et al., 2023): ``A = clip((r − μ_c) / (σ_c + 1e-6), ±A_max)``
    with ``μ_c, σ_c`` over the last ``buffer_size`` rewards of prompt ``c`` (this batch's included), or over the
    whole batch while a prompt has fewer than ``min_count``."""

    def __init__(self, buffer_size: int, min_count: int, clip: float) -> None:
        self.buffer_size, self.min_count, self.clip = buffer_size, min_count, clip
        self.buffers: dict[int, deque] = defaultdict(lambda: deque(maxlen=self.buffer_size))

    def normalize(self, labels: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(rewards)
        everything = rewards.float()
        for label in labels.unique().tolist():
            rows = labels == label
            buffer = self.buffers[label]
            buffer.extend(rewards[rows].tolist())
            pool = torch.tensor(list(buffer), dtype=torch.float32) if len(buffer) >= self.min_count else everything
            std = pool.std() if pool.numel() > 1 else torch.tensor(0.0)
            out[rows] = (rewards[rows] - pool.mean().to(rewards)) / (std.to(rewards) + 1e-6)
        return out.clamp(-self.clip, self.clip)

    def state_dict(self) -> dict:
        return {str(label): list(values) for label, values in self.buffers.items()}

    def load_state_dict(self, state: dict) -> None:
        self.buffers.clear()
        for label, values in state.items():
            self.buffers[int(label)].extend(values)


class ImageRollout(Rollout):
    """Sample ``objective.needs.samples_per_prompt`` images per prompt from the diffusion policy ``π_t`` with a
    stochastic sampler (DDIM with ``eta`` > 0, or the LCM multistep sampler), recording each step's log-probability, score them
    with the module's image reward, and hand the :class:`~rlhf_lightning.rollout.Samples` (rows = trajectories,
    "tokens" = steps) to ``training_step``. Configured at the recipe's ``rollout:`` key.

    Args:
        sampler: ``ddim`` (every step stochastic, σ from ``eta``) or ``lcm`` (a latent consistency model's multistep
            sampler: the steps but the last re-noise, so ``num_steps`` − 1 log-probabilities; the paper's setting).
        eta: DDIM's η: the share of DDPM noise per step; must be > 0 (η = 0 is deterministic: no log-probs).
        num_steps: denoising steps per sample (the paper's horizon: 8).
        guidance_scale: classifier-free guidance w of a text-conditional UNet (``ε_∅ + w·(ε_c − ε_∅)``, part of the
            policy: the log-probs use the guided ε); for an LCM UNet, the guidance embedding's w (Dreamshaper: 8).
            1: no guidance.
        kl_coef: γ of the shaped reward ``r − γ·(ln π_t(τ) − ln π_ref(τ))`` (0: no KL, as in the paper's runs).
        target_kl, kl_horizon: the adaptive KL controller, as :class:`~rlhf_lightning.callbacks.Rollout`.
        reward_normalization: ``per_prompt`` (the paper's setting for both methods: rewards z-scored against the
            last ``buffer_size`` rewards of the same prompt, clipped to ``± advantage_clip``) or ``none``.
        buffer_size, min_count, advantage_clip: the per-prompt statistics (paper: 32, 16, 10).
    """

    def __init__(self, sampler: SamplerKind = "ddim", eta: float = 1.0, num_steps: int = 8, guidance_scale: float = 1.0,
                 kl_coef: float = 0.0, target_kl: float | None = None, kl_horizon: int = 10000,
                 reward_normalization: Normalization = "per_prompt", buffer_size: int = 32, min_count: int = 16,
                 advantage_clip: float = 10.0) -> None:
        if sampler == "ddim":
            check_ddim_eta(eta, f"{FIELD}.eta")
        raise_all([RecipeError(f"{FIELD}.{key}", problem, fix) for key, ok, problem, fix in (
            ("sampler", sampler in ("ddim", "lcm"), f"must be ddim or lcm, got {sampler!r}", ""),
            ("num_steps", sampler != "lcm" or not isinstance(num_steps, int) or num_steps >= 2,
             f"must be ≥ 2 with the LCM sampler (its last step is deterministic), got {num_steps!r}", "e.g. 4 or 8"),
            ("guidance_scale", isinstance(guidance_scale, (int, float)) and math.isfinite(guidance_scale)
             and guidance_scale >= 1, f"must be a number ≥ 1, got {guidance_scale!r}", "1 (none), or e.g. 5 for SD"),
            ("num_steps", isinstance(num_steps, int) and num_steps >= 1, f"must be an integer ≥ 1, got {num_steps!r}",
             "e.g. 8 (the paper's horizon)"),
            ("reward_normalization", reward_normalization in ("none", "per_prompt"),
             f"must be none or per_prompt, got {reward_normalization!r}", ""),
            ("buffer_size", isinstance(buffer_size, int) and buffer_size >= 2, f"must be ≥ 2, got {buffer_size!r}", ""),
            ("min_count", isinstance(min_count, int) and 1 <= min_count <= max(buffer_size, 1),
             f"must be in [1, buffer_size], got {min_count!r}", ""),
            ("advantage_clip", isinstance(advantage_clip, (int, float)) and math.isfinite(advantage_clip)
             and advantage_clip > 0, f"must be > 0, got {advantage_clip!r}", "the paper uses 10")) if not ok])
        super().__init__(max_new_tokens=num_steps, kl_coef=kl_coef, target_kl=target_kl, kl_horizon=kl_horizon,
                         no_eos_reward=None)
        self.sampler, self.eta, self.num_steps, self.guidance_scale = sampler, float(eta), num_steps, float(guidance_scale)
        self.reward_normalization = reward_normalization
        self.stats = PerPromptStats(buffer_size, min_count, float(advantage_clip))

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not isinstance(pl_module, DiffusionRLHFModule):
            raise RecipeError("rollout", f"ImageRollout samples from a diffusion policy, but the model is "
                              f"{type(pl_module).__name__}", "set model.class_path: rlhf_lightning.diffusion."
                              "DiffusionRLHFModule, or use rollout.class_path: rlhf_lightning.callbacks.Rollout for text")
        pl_module.use_sampler(self.eta, self.num_steps, self.sampler, self.guidance_scale)
        if pl_module.objective.needs.rollout:
            self.check_kl_coef(pl_module)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "prompt_stats": self.stats.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.stats.load_state_dict(state_dict.get("prompt_stats", {}))

    @staticmethod
    def noise_generator(module: DiffusionRLHFModule) -> torch.Generator:
        """The batch's noise (x_T and every step's): a CPU generator seeded by the run's seed, this process's rank
        and the batch number, so a resumed run draws what the uninterrupted one drew and ranks draw apart."""
        rank = module.global_rank if module._trainer is not None else 0
        return torch.Generator().manual_seed(hash((torch.initial_seed(), rank, module._batch_number)) % 2**63)

    @torch.no_grad()
    def collect(self, module: DiffusionRLHFModule, batch: dict) -> Samples:
        """One rollout batch of ``B`` prompts: ``k`` trajectories each from noise ``x_T ~ N(0, I)``
        (:meth:`noise_generator`), the images' rewards (normalised per prompt),
        and ``ln π_ref`` of every step when the objective uses the reference."""
        start = time.perf_counter()
        needs = module.objective.needs
        k = needs.samples_per_prompt
        device = module.device
        labels = batch["labels"].to(device).repeat_interleave(k)
        prompts = [prompt for prompt in batch["prompt"] for _ in range(k)]
        condition = module.condition(labels, prompts)
        size = module.resolution
        generator = self.noise_generator(module)
        noise = torch.randn(len(labels), module.channels, size, size, generator=generator).to(device)
        with module.precision_context():
            trajectory = sample_trajectory(module.denoiser(), noise, condition, module.timesteps,
                                           module.alphas_cumprod, module.sampler, generator)
        generation_seconds = time.perf_counter() - start
        raw = module.reward.checked_score(module.decode(trajectory.samples), labels, prompts).to(device)
        require_finite("image reward", raw, module._batch_number, module.reduce_sum)  # stops before any update
        rewards = self.stats.normalize(labels, raw) if self.reward_normalization == "per_prompt" else raw
        ref = None
        if needs.reference:
            with module.precision_context():
                ref = module.trajectory_logprobs(trajectory.latents, condition, use_reference=True)
        metrics = {"reward/raw": raw.mean().item(), "reward/normalized": rewards.mean().item(),
                   "reward/std": raw.std().item() if len(raw) > 1 else 0.0,
                   "time/generation_seconds": generation_seconds,
                   "time/rollout_seconds": time.perf_counter() - start}
        return trajectory_samples(trajectory, rewards, k, condition=condition, ref_log_probs=ref,
                                  kl_coef=self.kl_coef, metrics=metrics)
