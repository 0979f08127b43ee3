"""Our stochastic DDIM step is diffusers' ``DDIMScheduler.step(eta=...)`` (same mean, σ and sample for the same
noise), and the schedule read from a diffusers scheduler refuses a deterministic last step."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from rlhf_lightning.diffusion import ddim_schedule, ddim_step, sample_trajectory
from rlhf_lightning.errors import RecipeError


def _scheduler(**overrides) -> DDIMScheduler:
    options = dict(num_train_timesteps=100, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                   set_alpha_to_one=False, clip_sample=False, steps_offset=1)
    return DDIMScheduler(**{**options, **overrides})


@pytest.mark.parametrize("eta", [1.0, 0.3])
def test_a_step_matches_diffusers_ddim_with_eta(eta):
    scheduler = _scheduler()
    timesteps, alphas_cumprod = ddim_schedule(scheduler, 4)
    assert timesteps == [76, 51, 26, 1]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=generator)
    for index, step in enumerate(timesteps):
        eps = torch.randn(x.shape, generator=generator)
        noise = torch.randn(x.shape, generator=generator)
        prev = timesteps[index + 1] if index + 1 < len(timesteps) else -1
        alpha_prev = alphas_cumprod[prev] if prev >= 0 else alphas_cumprod[0]
        mean, sigma = ddim_step(x, eps, alphas_cumprod[step], alpha_prev, eta)
        theirs = scheduler.step(eps, step, x, eta=eta, variance_noise=noise).prev_sample
        assert torch.allclose(mean + sigma * noise, theirs, atol=1e-5), step
        x = theirs


def test_a_trajectory_on_a_diffusers_schedule_has_finite_log_probs():
    timesteps, alphas_cumprod = ddim_schedule(_scheduler(), 8)
    trajectory = sample_trajectory(lambda x, t, c: 0.1 * x, torch.randn(2, 1, 4, 4), None, timesteps,
                                   alphas_cumprod, 1.0, torch.Generator().manual_seed(1))
    assert trajectory.log_probs.shape == (2, 8) and torch.isfinite(trajectory.log_probs).all()


def test_a_schedule_that_ends_at_timestep_zero_is_refused():
    with pytest.raises(RecipeError, match="num_steps") as error:
        ddim_schedule(_scheduler(steps_offset=0), 4)
    assert "steps_offset" in str(error.value)
    assert ddim_schedule(_scheduler(steps_offset=0, timestep_spacing="trailing"), 4)[0][-1] >= 1


@pytest.mark.parametrize("steps", [0, -2, 2.5, 101])
def test_bad_step_counts_are_refused(steps):
    with pytest.raises(RecipeError, match="num_steps"):
        ddim_schedule(_scheduler(), steps)


def test_the_lcm_sampler_matches_diffusers_lcm_scheduler():
    """Each stochastic step of LCMSampler is LCMScheduler.step's re-noising for the same noise; the last step is the
    deterministic denoised sample, with no log-probability."""
    from diffusers import LCMScheduler

    from rlhf_lightning.diffusion.ddim import LCMSampler

    scheduler = LCMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                             beta_schedule="scaled_linear", set_alpha_to_one=True, clip_sample=False)
    timesteps, alphas_cumprod = ddim_schedule(scheduler, 4, final_step_deterministic=True)
    sampler = LCMSampler(timestep_scaling=scheduler.config.timestep_scaling)
    starts, ends = sampler.transitions(timesteps, alphas_cumprod)
    assert starts == timesteps[:-1] and ends == timesteps[1:]
    scheduler.set_timesteps(4)
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    theirs_noise, ours_noise = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for index, step in enumerate(timesteps):
        eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(10 + index))
        theirs = scheduler.step(eps, step, x, generator=theirs_noise).prev_sample
        if index < len(timesteps) - 1:
            mean, std = sampler.step(x, eps, step, timesteps[index + 1], alphas_cumprod)
            ours = mean + std * torch.randn(x.shape, generator=ours_noise)
        else:
            ours = sampler.final(x, eps, step, alphas_cumprod)
        assert torch.allclose(ours, theirs, atol=1e-5), step
        x = theirs
    trajectory = sample_trajectory(lambda x, t, c: 0.1 * x, torch.randn(2, 4, 4, 4), None, timesteps, alphas_cumprod,
                                   sampler, torch.Generator().manual_seed(1))
    assert trajectory.log_probs.shape == (2, 3) and trajectory.final.shape == (2, 4, 4, 4)
    assert torch.equal(trajectory.samples, trajectory.final)
    with pytest.raises(RecipeError, match="num_steps"):
        sampler.transitions(timesteps[:1], alphas_cumprod)
