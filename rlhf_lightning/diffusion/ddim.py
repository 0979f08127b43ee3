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
from typing import Any, Callable, Optional, Sequence, Union

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
        latents: ``[B, S + 1, ...]``: x_T (the initial noise) first, then the state after each stochastic step.
        timesteps: the S timesteps the stochastic steps leave from, in sampling order (decreasing).
        prev_timesteps: the timestep each step goes to (``-1``: the final DDIM step, to ᾱ of timestep 0).
        log_probs: ``[B, S]``: ``ln π(x_prev | x_t, c)`` of each step under the sampling policy.
        final: the sampler's output when it ends with a deterministic step (the consistency model's last
            denoising, a function of the last state, with no log-probability); ``None``: the last state.
    """

    latents: torch.Tensor
    timesteps: list[int]
    prev_timesteps: list[int]
    log_probs: torch.Tensor
    final: Optional[torch.Tensor] = None

    @property
    def samples(self) -> torch.Tensor:
        """The final samples ``[B, ...]``."""
        return self.final if self.final is not None else self.latents[:, -1]


def _schedule(timesteps: Sequence[int], alphas_cumprod: torch.Tensor) -> list[int]:
    steps = [int(t) for t in timesteps]
    if not steps or any(b >= a for a, b in zip(steps, steps[1:])) or steps[-1] < 1 or steps[0] >= len(alphas_cumprod):
        raise RecipeError("timesteps", f"must be distinct, decreasing and within [1, {len(alphas_cumprod) - 1}] "
                          f"(a step from timestep 0 to ᾱ₀ has σ = 0), got {steps}",
                          "use e.g. the scheduler's timesteps: T − 1, …, T/n (n steps)")
    return steps[1:] + [-1]


def _alpha_bar(alphas_cumprod: torch.Tensor, step: int) -> torch.Tensor:
    return alphas_cumprod[max(step, 0)] if step >= 0 else alphas_cumprod[0]


@dataclass(frozen=True)
class DDIMSampler:
    """The stochastic DDIM sampler (module docstring): every one of the n steps is a Gaussian policy."""

    eta: float = 1.0

    def __post_init__(self) -> None:
        check_ddim_eta(self.eta)

    def transitions(self, timesteps: Sequence[int], alphas_cumprod: torch.Tensor) -> tuple[list[int], list[int]]:
        """``(from, to)`` timesteps of the stochastic steps."""
        return [int(t) for t in timesteps], _schedule(timesteps, alphas_cumprod)

    def step(self, x_t: torch.Tensor, eps: torch.Tensor, step: int, prev: int,
             alphas_cumprod: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ddim_step(x_t, eps, _alpha_bar(alphas_cumprod, step), _alpha_bar(alphas_cumprod, prev), self.eta)

    def final(self, x: torch.Tensor, eps: torch.Tensor, step: int, alphas_cumprod: torch.Tensor) -> None:
        return None


@dataclass(frozen=True)
class LCMSampler:
    """The latent consistency model's multistep sampler (Luo et al., 2023; ``diffusers.LCMScheduler.step``) as a
    policy, as in RLCM (Oertell et al., 2024). At timestep t the consistency function gives

        x̂₀ = (x_t − √(1 − ᾱ_t)·ε_θ) / √ᾱ_t,   f_θ(x_t, t) = c_out(t)·x̂₀ + c_skip(t)·x_t
        c_skip = σ_d² / ((s·t)² + σ_d²),   c_out = s·t / √((s·t)² + σ_d²)     (σ_d = 0.5, s = timestep_scaling)

    and each step but the last re-noises it to the next timestep t′: ``x_t′ ~ N(√ᾱ_t′·f_θ(x_t, t), (1 − ᾱ_t′) I)``,
    a Gaussian policy. The last step returns ``f_θ`` itself: deterministic, part of how the final state becomes an
    image (like decoding), so n steps give n − 1 log-probabilities (n ≥ 2).
    """

    timestep_scaling: float = 10.0

    def transitions(self, timesteps: Sequence[int], alphas_cumprod: torch.Tensor) -> tuple[list[int], list[int]]:
        steps = [int(t) for t in timesteps]
        if len(steps) < 2 or any(b >= a for a, b in zip(steps, steps[1:])) or steps[0] >= len(alphas_cumprod):
            raise RecipeError("rollout.init_args.num_steps", f"the LCM sampler needs ≥ 2 distinct, decreasing "
                              f"timesteps (its last step is deterministic, so 1 step has no log-probability), got "
                              f"{steps}", "use 4 or 8 steps")
        return steps[:-1], steps[1:]

    def denoised(self, x_t: torch.Tensor, eps: torch.Tensor, step: int, alphas_cumprod: torch.Tensor) -> torch.Tensor:
        alpha_t = alphas_cumprod[step]
        scaled = step * self.timestep_scaling
        c_skip = 0.25 / (scaled ** 2 + 0.25)
        c_out = scaled / (scaled ** 2 + 0.25) ** 0.5
        x0 = (x_t - torch.sqrt(1 - alpha_t) * eps) / torch.sqrt(alpha_t)
        return c_out * x0 + c_skip * x_t

    def step(self, x_t: torch.Tensor, eps: torch.Tensor, step: int, prev: int,
             alphas_cumprod: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha_prev = alphas_cumprod[prev]
        return torch.sqrt(alpha_prev) * self.denoised(x_t, eps, step, alphas_cumprod), torch.sqrt(1 - alpha_prev)

    def final(self, x: torch.Tensor, eps: torch.Tensor, step: int, alphas_cumprod: torch.Tensor) -> torch.Tensor:
        return self.denoised(x, eps, step, alphas_cumprod)


Sampler = Union[DDIMSampler, LCMSampler]


def as_sampler(sampler: Union[float, Sampler]) -> Sampler:
    """A number is DDIM's η."""
    return sampler if isinstance(sampler, (DDIMSampler, LCMSampler)) else DDIMSampler(eta=sampler)


def _timestep_batch(x: torch.Tensor, step: int) -> torch.Tensor:
    return torch.full((x.shape[0],), int(step), dtype=torch.long, device=x.device)


def sample_trajectory(denoiser: Denoiser, noise: torch.Tensor, condition: Any, timesteps: Sequence[int],
                      alphas_cumprod: torch.Tensor, sampler: Union[float, Sampler],
                      generator: Optional[torch.Generator] = None) -> Trajectory:
    """Sample trajectories from ``noise`` (x_T) with ``sampler`` (a number: DDIM's η); records every stochastic
    step's log-probability under the sampling policy (no gradients). ``generator``: the per-step noise (its
    device's numbers, moved to the latents' device)."""
    sampler = as_sampler(sampler)
    starts, ends = sampler.transitions(timesteps, alphas_cumprod)
    x = noise
    latents, log_probs = [noise], []
    with torch.no_grad():
        for step, prev in zip(starts, ends):
            mean, sigma = sampler.step(x, denoiser(x, _timestep_batch(x, step), condition), step, prev, alphas_cumprod)
            if generator is None:
                draw = torch.randn(x.shape, device=x.device, dtype=x.dtype)
            else:
                draw = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
            x = mean + sigma * draw
            latents.append(x)
            log_probs.append(gaussian_log_prob(x, mean, sigma))
        last = int(timesteps[-1])
        final = None
        if isinstance(sampler, LCMSampler):
            final = sampler.final(x, denoiser(x, _timestep_batch(x, last), condition), last, alphas_cumprod)
    return Trajectory(torch.stack(latents, dim=1), starts, ends, torch.stack(log_probs, dim=1), final)


def trajectory_log_probs(denoiser: Denoiser, trajectory: Trajectory, condition: Any, alphas_cumprod: torch.Tensor,
                         sampler: Union[float, Sampler]) -> torch.Tensor:
    """``[B, S]`` per-step log-probabilities of the stored ``trajectory`` under ``denoiser`` (with gradients):
    the sampling policy's own values when ``denoiser`` is the policy that sampled it."""
    sampler = as_sampler(sampler)
    values = []
    for index, (step, prev) in enumerate(zip(trajectory.timesteps, trajectory.prev_timesteps)):
        x_t, x_prev = trajectory.latents[:, index], trajectory.latents[:, index + 1]
        mean, sigma = sampler.step(x_t, denoiser(x_t, _timestep_batch(x_t, step), condition), step, prev,
                                   alphas_cumprod)
        values.append(gaussian_log_prob(x_prev, mean, sigma))
    return torch.stack(values, dim=1)
