"""Build the embedded image task under a cache directory, with no downloads:

- ``pipeline/unet``: a tiny class-conditional ``diffusers.UNet2DModel`` (16×16 RGB, one class per prompt of
  :data:`~rlhf_lightning.tasks.images.shapes.CLASSES`), trained from random init with the DDPM noise-prediction
  loss on procedurally drawn shapes, saved with ``save_pretrained`` (safetensors);
- ``pipeline/scheduler``: its ``DDIMScheduler`` (``steps_offset: 1``, so that every sampler step is stochastic);
- ``scorer``: the learned image reward (:class:`~rlhf_lightning.tasks.images.scorer.ImageScorer`), a small CNN
  fitted to the hidden judge's scores on shapes, distorted shapes and noise: the aesthetic-predictor stand-in;
- ``manifest.json``: the build's settings; a build with other settings is rebuilt, one with the same is reused.

Each part is written to a temporary folder and renamed into place, under a lock, so concurrent runs take turns
and an interrupted build leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Union

import torch

from rlhf_lightning.progress import progress_bar
from rlhf_lightning.tasks.images.judge import image_score
from rlhf_lightning.tasks.images.scorer import ImageScorer, train_scorer
from rlhf_lightning.tasks.images.shapes import CLASSES, draw_shapes
from rlhf_lightning.tasks.summarize.build import _locked

VERSION = "images-2"
RESOLUTION = 16


def unet_settings() -> dict:
    """The tiny UNet: two resolution levels (16 → 8), 16/32 channels, one embedding per class."""
    return dict(sample_size=RESOLUTION, in_channels=3, out_channels=3, layers_per_block=1,
                block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=len(CLASSES), norm_num_groups=8)


def scheduler_settings() -> dict:
    """Stable Diffusion's noise schedule (scaled linear β from 0.00085 to 0.012): ᾱ of timestep 0 is 0.99915, so
    the last sampler step keeps σ ≈ 0.03 per pixel instead of vanishing."""
    return dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                steps_offset=1, clip_sample=False, prediction_type="epsilon", set_alpha_to_one=False)


def pipeline_dir(root: Union[str, Path]) -> Path:
    return Path(root) / "pipeline"


def scorer_dir(root: Union[str, Path]) -> Path:
    return Path(root) / "scorer"


def pretrain_unet(steps: int, seed: int, batch_size: int = 64, lr: float = 2e-3, progress: bool = True):
    """The DDPM loss ``E‖ε − ε_θ(√ᾱ_t x₀ + √(1−ᾱ_t) ε, t, c)‖²`` on procedural shapes, AdamW with cosine decay."""
    from diffusers import DDPMScheduler, UNet2DModel

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    unet = UNet2DModel(**unet_settings())
    noise_schedule = DDPMScheduler(**{k: v for k, v in scheduler_settings().items() if k not in ("steps_offset", "set_alpha_to_one")})
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05)
    bar = progress_bar(range(steps), desc="image task: pretraining the tiny UNet", total=steps, disable=not progress)
    for _ in bar:
        labels = torch.randint(0, len(CLASSES), (batch_size,), generator=generator)
        images = draw_shapes(labels, generator, size=RESOLUTION)
        noise = torch.randn(images.shape, generator=generator)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (batch_size,), generator=generator)
        noisy = noise_schedule.add_noise(images, noise, t)
        loss = torch.nn.functional.mse_loss(unet(noisy, t, class_labels=labels).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return unet.eval()


def _put_in_place(tmp: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def build_image_task(root: Union[str, Path], seed: int = 0, unet_steps: int = 1500, scorer_steps: int = 600,
                     progress: bool = True) -> Path:
    """Build (or reuse) the task under ``root``; returns the pipeline directory."""
    from diffusers import DDIMScheduler

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    settings = {"version": VERSION, "seed": seed, "unet_steps": unet_steps, "scorer_steps": scorer_steps,
                "unet": {k: list(v) if isinstance(v, tuple) else v for k, v in unet_settings().items()},
                "scheduler": scheduler_settings()}
    manifest = root / "manifest.json"
    with _locked(root):
        if manifest.is_file() and json.loads(manifest.read_text()) == settings and pipeline_dir(root).is_dir() \
                and scorer_dir(root).is_dir():
            return pipeline_dir(root)
        started = time.perf_counter()
        if progress:
            print(f"Building the embedded image task under {root} (a tiny UNet and the learned reward; no "
                  "downloads, once)", flush=True)
        manifest.unlink(missing_ok=True)
        unet = pretrain_unet(unet_steps, seed, progress=progress)
        tmp = root / "pipeline.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        DDIMScheduler(**scheduler_settings()).save_pretrained(tmp / "scheduler")
        _put_in_place(tmp, pipeline_dir(root))
        scorer = train_scorer(image_score, scorer_steps, seed, size=RESOLUTION, progress=progress)
        tmp = root / "scorer.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        scorer.save(tmp)
        _put_in_place(tmp, scorer_dir(root))
        tmp_manifest = manifest.with_suffix(".json.tmp")
        tmp_manifest.write_text(json.dumps(settings, indent=2, sort_keys=True))
        os.replace(tmp_manifest, manifest)
        if progress:
            print(f"Image task built in {time.perf_counter() - started:.0f} s", flush=True)
    return pipeline_dir(root)


__all__ = ["ImageScorer", "build_image_task", "pipeline_dir", "pretrain_unet", "scorer_dir"]
