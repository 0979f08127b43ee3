"""Diffusion policies (issue 17, in progress): the stochastic DDIM sampler as a Gaussian policy per denoising
step, with the per-step log-probabilities that REBEL's Eq. 1 and the clipped objective consume."""

from rlhf_lightning.diffusion.ddim import (Trajectory, check_ddim_eta, ddim_sigma, ddim_step, gaussian_log_prob,
                                           sample_trajectory, trajectory_log_probs)
from rlhf_lightning.diffusion.rollout import trajectory_rollout
from rlhf_lightning.diffusion.schedule import ddim_schedule

__all__ = ["Trajectory", "check_ddim_eta", "ddim_schedule", "ddim_sigma", "ddim_step", "gaussian_log_prob", "sample_trajectory",
           "trajectory_log_probs", "trajectory_rollout"]
