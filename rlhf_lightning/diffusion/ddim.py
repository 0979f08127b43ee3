"""The stochastic DDIM sampler (Song et al., 2021, Eq. 12) as a policy: each denoising step draws

    x̂₀        = (x_t − √(1 − ᾱ_t)·ε_θ(x_t, t, c)) / √ᾱ_t
    σ_t        = η · √((1 − ᾱ_prev) / (1 − ᾱ_t)) · √(1 − ᾱ_t / ᾱ_prev)
    x_prev     ~ N( √ᾱ_prev · x̂₀ + √(1 − ᾱ_prev − σ_t²) · ε_θ,  σ_t² I )

so ``ln π_θ(x_prev | x_t, c)`` is a diagonal Gaussian log-density (summed over the latent's elements), and a
trajectory's log-probability is the sum over its steps: what a response's token log-probs are on the text path.
η = 0 is the deterministic DDIM sampler, whose log-probs do not exist (σ = 0), so η must be > 0. The last step
would go to ᾱ_prev = 1 (σ = 0 again); as in DDPO (Black et al., 2023), it goes to ᾱ of the first training
timestep instead, which keeps every step stochastic.

The denoiser is any callable ``denoiser(x_t, t, condition) -> ε`` (a ``diffusers`` UNet wrapped to return its
``.sample``, or a small torch module).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from rlhf_lightning.errors import RecipeError

Denoiser = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def check_ddim_eta(eta: float, field: str = "eta") -> None:
    """A stochastic sampler is needed for log-probabilities: η must be a finite number > 0."""
    if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta > 0):
        raise RecipeError(field, f"must be > 0, got {eta!r}: with η = 0 the DDIM sampler is deterministic and a "
                          "step has no log-probability for REBEL or the clipped objective to use",
                          "use η = 1.0 (DDPM-like noise, as DDPO) or any value in (0, 1]")


def ddim_sigma(alpha_bar_t: torch.Tensor, alpha_bar_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """σ_t = η · √((1 − ᾱ_prev)/(1 − ᾱ_t)) · √(1 − ᾱ_t/ᾱ_prev)."""
    return eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) * torch.sqrt(1 - alpha_bar_t / alpha_bar_prev)


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor, alpha_bar_prev: torch.Tensor,
              eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of ``x_prev`` given ``x_t`` and the predicted noise ``eps`` (see the module
    docstring); ``alpha_bar_*`` are scalars or broadcast over the batch."""
    sigma = ddim_sigma(alpha_bar_t, alpha_bar_prev, eta)
    x0 = (x_t - torch.sqrt(1 - alpha_bar_t) * eps) / torch.sqrt(alpha_bar_t)
    mean = torch.sqrt(alpha_bar_prev) * x0 + torch.sqrt((1 - alpha_bar_prev - sigma ** 2).clamp(min=0)) * eps
    return mean, sigma


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``ln N(x; mean, std² I)`` summed over every dimension but the first (one value per batch row)."""
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    per_element = -((x - mean) ** 2) / (2 * std ** 2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return per_element.expand_as(x).flatten(1).sum(dim=1)


@dataclass
class Trajectory:
    """A batch of sampled denoising trajectories.

    Attributes:
        latents: ``[B, T + 1, ...]``: x_T (the initial noise) first, the final sample last.
        timesteps: the T timesteps stepped from, in sampling order (decreasing).
        prev_timesteps: the timestep each step goes to (``-1``: the final step, to ᾱ of timestep 0).
        log_probs: ``[B, T]``: ``ln π(x_prev | x_t, c)`` of each step under the sampling policy.
    """

    latents: torch.Tensor
    timesteps: list[int]
    prev_timesteps: list[int]
    log_probs: torch.Tensor

    @property
    def samples(self) -> torch.Tensor:
        """The final samples ``[B, ...]``."""
        return self.latents[:, -1]


def _schedule(timesteps: Sequence[int], alphas_cumprod: torch.Tensor) -> list[int]:
    steps = [int(t) for t in timesteps]
    if not steps or any(b >= a for a, b in zip(steps, steps[1:])) or steps[-1] < 1 or steps[0] >= len(alphas_cumprod):
        raise RecipeError("timesteps", f"must be distinct, decreasing and within [1, {len(alphas_cumprod) - 1}] "
                          f"(a step from timestep 0 to ᾱ₀ has σ = 0), got {steps}",
                          "use e.g. the scheduler's timesteps: T − 1, …, T/n (n steps)")
    return steps[1:] + [-1]


def _alpha_bar(alphas_cumprod: torch.Tensor, step: int) -> torch.Tensor:
    return alphas_cumprod[max(step, 0)] if step >= 0 else alphas_cumprod[0]


def sample_trajectory(denoiser: Denoiser, noise: torch.Tensor, condition: Any, timesteps: Sequence[int],
                      alphas_cumprod: torch.Tensor, eta: float,
                      generator: Optional[torch.Generator] = None) -> Trajectory:
    """Sample trajectories from ``noise`` (x_T) with the stochastic DDIM sampler; records every step's
    log-probability under the sampling policy (no gradients)."""
    check_ddim_eta(eta)
    prev_steps = _schedule(timesteps, alphas_cumprod)
    x = noise
    latents, log_probs = [noise], []
    with torch.no_grad():
        for step, prev in zip(timesteps, prev_steps):
            t = torch.full((x.shape[0],), int(step), dtype=torch.long, device=x.device)
            mean, sigma = ddim_step(x, denoiser(x, t, condition), _alpha_bar(alphas_cumprod, int(step)),
                                    _alpha_bar(alphas_cumprod, prev), eta)
            if generator is None:
                draw = torch.randn(x.shape, device=x.device, dtype=x.dtype)
            else:  # the generator's device (a CPU generator gives the same numbers on any device)
                draw = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
            x = mean + sigma * draw
            latents.append(x)
            log_probs.append(gaussian_log_prob(x, mean, sigma))
    return Trajectory(torch.stack(latents, dim=1), [int(t) for t in timesteps], prev_steps,
                      torch.stack(log_probs, dim=1))


def trajectory_log_probs(denoiser: Denoiser, trajectory: Trajectory, condition: Any, alphas_cumprod: torch.Tensor,
                         eta: float) -> torch.Tensor:
    """``[B, T]`` per-step log-probabilities of the stored ``trajectory`` under ``denoiser`` (with gradients):
    the sampling policy's own values when ``denoiser`` is the policy that sampled it."""
    check_ddim_eta(eta)
    values = []
    for index, (step, prev) in enumerate(zip(trajectory.timesteps, trajectory.prev_timesteps)):
        x_t, x_prev = trajectory.latents[:, index], trajectory.latents[:, index + 1]
        t = torch.full((x_t.shape[0],), step, dtype=torch.long, device=x_t.device)
        mean, sigma = ddim_step(x_t, denoiser(x_t, t, condition), _alpha_bar(alphas_cumprod, step),
                                _alpha_bar(alphas_cumprod, prev), eta)
        values.append(gaussian_log_prob(x_prev, mean, sigma))
    return torch.stack(values, dim=1)
