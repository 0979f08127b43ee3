"""Diffusion policies: the stochastic DDIM sampler as a Gaussian policy per denoising step, with the per-step
log-probabilities that REBEL's Eq. 1 and the clipped objective consume; the UNet policy in
:class:`DiffusionRLHFModule`; image rewards. Needs the optional extra ``rlhf-lightning[diffusion]`` (diffusers)."""

from rlhf_lightning.diffusion.ddim import (Trajectory, check_ddim_eta, ddim_sigma, ddim_step, gaussian_log_prob,
                                           sample_trajectory, trajectory_log_probs)
from rlhf_lightning.diffusion.module import DiffusionRLHFModule
from rlhf_lightning.diffusion.policy import DiffusionPolicyConfig
from rlhf_lightning.diffusion.rewards import ImageFunctionReward, ImageReward, LearnedImageReward, jpeg_compressibility
from rlhf_lightning.diffusion.rollout import trajectory_rollout, trajectory_samples
from rlhf_lightning.diffusion.schedule import ddim_schedule

__all__ = ["DiffusionPolicyConfig", "DiffusionRLHFModule", "ImageFunctionReward", "ImageReward", "LearnedImageReward",
           "Trajectory", "check_ddim_eta", "ddim_schedule", "ddim_sigma", "ddim_step", "gaussian_log_prob",
           "sample_trajectory", "trajectory_log_probs", "trajectory_rollout", "trajectory_samples", "jpeg_compressibility"]
