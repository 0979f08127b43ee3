"""The sampler's schedule read from a ``diffusers`` scheduler (``diffusers`` is the optional extra
``rlhf-lightning[diffusion]``): the timesteps a run steps through and the noise schedule ᾱ."""

from __future__ import annotations

from typing import Any

import torch

from rlhf_lightning.errors import RecipeError


def ddim_schedule(scheduler: Any, num_steps: int, field: str = "num_steps",
                  final_step_deterministic: bool = False) -> tuple[list[int], torch.Tensor]:
    """``(timesteps, alphas_cumprod)`` for ``num_steps`` denoising steps of ``scheduler`` (any scheduler with
    ``set_timesteps``, ``timesteps`` and ``alphas_cumprod``, e.g. ``diffusers.DDIMScheduler`` or
    ``LCMScheduler``). The last step must leave from a timestep ≥ 1: a step from timestep 0 is deterministic
    (σ = 0) and has no log-probability; ``steps_offset: 1`` (Stable Diffusion's setting) gives that. A sampler
    whose last step is deterministic by design (``final_step_deterministic``, the LCM sampler) may end anywhere."""
    if not (isinstance(num_steps, int) and num_steps >= 1):
        raise RecipeError(field, f"must be an integer ≥ 1, got {num_steps!r}", "use e.g. 8")
    if num_steps > scheduler.config.num_train_timesteps:
        raise RecipeError(field, f"{num_steps} steps but the scheduler has only "
                          f"{scheduler.config.num_train_timesteps} training timesteps", "use fewer steps")
    scheduler.set_timesteps(num_steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    if timesteps[-1] < 1 and not final_step_deterministic:
        raise RecipeError(field, f"the scheduler's last timestep is {timesteps[-1]}: the step from it is deterministic "
                          "(σ = 0), so its log-probability does not exist",
                          "set the scheduler's steps_offset to 1 (as Stable Diffusion's) or timestep_spacing to "
                          "'trailing'")
    return timesteps, scheduler.alphas_cumprod.detach().clone().float()
