"""``ImageEvaluation``: the diffusion policy's images on fixed noise, scored by a judge, before, during and after."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from rlhf_lightning.callbacks.evaluation import EvaluationHistory, rollout_batches_done
from rlhf_lightning.diffusion.ddim import sample_trajectory
from rlhf_lightning.diffusion.rewards import ImageReward, uint8_pixels
from rlhf_lightning.errors import RecipeError, raise_all
from rlhf_lightning.step_metrics import logger_step

FIELD = "trainer.callbacks[ImageEvaluation].init_args"


def image_grid(images: Tensor, rows: int, scale: int = 4):
    """A PIL image of ``images`` (``[rows·cols, 3, H, W]`` in ``[-1, 1]``), ``rows`` rows, each pixel ``scale``²."""
    from PIL import Image

    count, _, height, width = images.shape
    cols = count // rows
    pixels = uint8_pixels(images).repeat_interleave(scale, -1).repeat_interleave(scale, -2)  # [N, 3, H·s, W·s]
    pad = 2
    h, w = height * scale + pad, width * scale + pad
    canvas = torch.full((3, rows * h + pad, cols * w + pad), 255, dtype=torch.uint8)
    for index in range(rows * cols):
        r, c = divmod(index, cols)
        canvas[:, pad + r * h: pad + r * h + height * scale, pad + c * w: pad + c * w + width * scale] = pixels[index]
    return Image.fromarray(canvas.permute(1, 2, 0).numpy())


class ImageEvaluation(EvaluationHistory, Callback):
    """Sample ``images_per_prompt`` images per prompt from fixed noise (the same noise at every evaluation, so the
    images of one column are the same starting point before and after training) before training, every
    ``every_n_rollouts`` rollout batches and at the end; score them with the judge (the hidden quality the reward
    stands for) and the training reward.

    Logged as ``eval/judge``, ``eval/reward``, ``eval/kl`` (mean ``ln π_θ(τ) − ln π_ref(τ)`` over the sampled
    trajectories); written to ``summary.json`` (``judge``, ``start_judge``, ``reward``, ``start_reward``, ``kl``),
    ``eval_history.json`` (every evaluation, with each image's judge score) and ``images_start.png`` /
    ``images_end.png`` (one row per prompt); the grids also go to W&B.

    Args:
        judge: the judge (default: the module's reward).
        images_per_prompt: images per prompt at each evaluation.
        every_n_rollouts: also evaluate every this many rollout batches (0: only before and after).
        seed: seed of the evaluation noise.
    """

    def __init__(self, judge: Optional[ImageReward] = None, images_per_prompt: int = 16, every_n_rollouts: int = 0,
                 seed: int = 1234) -> None:
        raise_all([RecipeError(f"{FIELD}.{key}", problem) for key, ok, problem in (
            ("images_per_prompt", isinstance(images_per_prompt, int) and images_per_prompt >= 1,
             f"must be an integer ≥ 1, got {images_per_prompt!r}"),
            ("every_n_rollouts", isinstance(every_n_rollouts, int) and every_n_rollouts >= 0,
             f"must be an integer ≥ 0, got {every_n_rollouts!r}")) if not ok])
        self.judge, self.images_per_prompt, self.every_n_rollouts, self.seed = judge, images_per_prompt, every_n_rollouts, seed
        self.history: list[dict] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        from rlhf_lightning.diffusion.module import DiffusionRLHFModule

        if not isinstance(pl_module, DiffusionRLHFModule):
            raise RecipeError("trainer.callbacks[ImageEvaluation]", "evaluates a diffusion policy, but the model is "
                              f"{type(pl_module).__name__}", "use WinRateEvaluation for text policies")
        pl_module.reference_for_evaluation = True

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.judge is not None:
            self.judge.setup(pl_module.device)
        if not self.history:
            self.evaluate(trainer, pl_module, rollouts=0)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        done = rollout_batches_done(trainer)
        if self.every_n_rollouts and done and done % self.every_n_rollouts == 0:
            self.evaluate(trainer, pl_module, rollouts=done)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        done = rollout_batches_done(trainer)
        if not self.history or self.history[-1]["rollouts"] != done:
            self.evaluate(trainer, pl_module, rollouts=done)
        start, end = self.history[0], self.history[-1]
        pl_module.summary.update(judge=round(end["judge"], 4), start_judge=round(start["judge"], 4),
                                 reward=round(end["reward"], 4), start_reward=round(start["reward"], 4),
                                 kl=round(end["kl"], 4), evaluated_images=len(end["judge_scores"]))

    # ------------------------------------------------------------------ one evaluation
    def prompts(self, trainer: Trainer) -> list[str]:
        prompts = getattr(trainer.datamodule, "prompts", None)
        return list(prompts) if prompts else ["(unconditional)"]

    @torch.no_grad()
    def evaluate(self, trainer: Trainer, pl_module, rollouts: int) -> dict:
        prompts = self.prompts(trainer)
        k = self.images_per_prompt
        labels = torch.arange(len(prompts), device=pl_module.device).repeat_interleave(k)
        texts = [prompt for prompt in prompts for _ in range(k)]
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        size = pl_module.resolution
        noise = torch.randn(len(labels), pl_module.channels, size, size, generator=generator).to(pl_module.device)
        step_noise = torch.Generator(device="cpu").manual_seed(self.seed + 1)
        condition = pl_module.condition(labels, texts)
        was_training = pl_module.policy.training
        pl_module.policy.eval()
        with pl_module.precision_context():
            trajectory = sample_trajectory(pl_module.denoiser(), noise, condition, pl_module.timesteps,
                                           pl_module.alphas_cumprod, pl_module.sampler, generator=step_noise)
            ref = pl_module.trajectory_logprobs(trajectory.latents, condition, use_reference=True)
        pl_module.policy.train(was_training)
        images = pl_module.decode(trajectory.samples)
        reward_scores = pl_module.reward.checked_score(images, labels, texts).float().cpu()
        judge_scores = (reward_scores if self.judge is None
                        else self.judge.checked_score(images, labels, texts).float().cpu())
        entry = {"rollouts": rollouts, "judge": judge_scores.mean().item(), "reward": reward_scores.mean().item(),
                 "kl": (trajectory.log_probs - ref).sum(-1).mean().item(), "judge_scores": judge_scores.tolist()}
        self.history.append(entry)
        self._log(trainer, entry, images.cpu(), len(prompts))
        return entry

    @rank_zero_only
    def _log(self, trainer: Trainer, entry: dict, images: Tensor, rows: int) -> None:
        step = logger_step(trainer)
        for logger in trainer.loggers:
            logger.log_metrics({f"eval/{key}": entry[key] for key in ("judge", "reward", "kl")}, step=step)
        root = Path(trainer.default_root_dir)
        root.mkdir(parents=True, exist_ok=True)
        grid = image_grid(images, rows)
        name = "images_start.png" if entry["rollouts"] == 0 else "images_end.png"
        grid.save(root / name)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="eval/images", images=[grid], step=step,
                                 caption=[f"after {entry['rollouts']} rollout batches"])
        tmp = root / "eval_history.json.tmp"
        tmp.write_text(json.dumps(self.history, indent=1))
        tmp.replace(root / "eval_history.json")

