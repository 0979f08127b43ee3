"""The learned image reward of the embedded task: a small CNN ``s_φ(image, class) ∈ (0, 1)`` fitted by least
squares to the hidden judge's scores, the stand-in for the LAION aesthetic predictor of the REBEL paper's image
experiment (a learned model of a quality the policy cannot see). Its training images span the judge's range:
the procedural shapes, centred shapes of every size, shapes of the wrong colour, shapes blended with noise or
smeared, blank images and noise. Saved as ``scorer.json`` + ``model.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from rlhf_lightning.progress import progress_bar
from rlhf_lightning.tasks.images.shapes import BACKGROUND, CLASSES, COLOURS, draw_shapes, shape_masks


class ImageScorer(nn.Module):
    """Three conv layers on the image and one-hot class planes, global average pooling, a linear head."""

    def __init__(self, num_classes: int = len(CLASSES), width: int = 32) -> None:
        super().__init__()
        self.num_classes, self.width = num_classes, width
        self.features = nn.Sequential(
            nn.Conv2d(3 + num_classes, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1, stride=2), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.SiLU())
        self.head = nn.Linear(2 * width, 1)

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        planes = nn.functional.one_hot(labels, self.num_classes).to(images)[:, :, None, None]
        x = torch.cat([images, planes.expand(-1, -1, *images.shape[-2:])], 1)
        h = self.features(x)
        pooled = torch.cat([h.mean((-2, -1)), h.amax((-2, -1))], 1)
        return torch.sigmoid(self.head(pooled)).squeeze(-1)

    def save(self, directory: Union[str, Path]) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "scorer.json").write_text(json.dumps({"num_classes": self.num_classes, "width": self.width}))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / "model.safetensors"))

    @classmethod
    def load(cls, directory: Union[str, Path]) -> "ImageScorer":
        from safetensors.torch import load_file

        directory = Path(directory)
        scorer = cls(**json.loads((directory / "scorer.json").read_text()))
        scorer.load_state_dict(load_file(str(directory / "model.safetensors")))
        return scorer.eval()


def scorer_training_images(count: int, generator: torch.Generator, size: int) -> tuple[Tensor, Tensor]:
    """``count`` images and labels spread over the judge's range (see the module docstring)."""
    labels = torch.randint(0, len(CLASSES), (count,), generator=generator)
    kind = torch.randint(0, 6, (count,), generator=generator)
    images = draw_shapes(labels, generator, size=size, min_radius=1.0, max_radius=7.0)
    centre = torch.full((count,), (size - 1) / 2) + torch.randint(-1, 2, (count,), generator=generator) * 0.5
    radius = 1.0 + 6.5 * torch.rand(count, generator=generator)
    centred_masks = shape_masks(labels, centre, centre, radius, size)[:, None]
    centred = torch.where(centred_masks, COLOURS[labels][:, :, None, None],
                          torch.full_like(images, BACKGROUND) + 0.05 * torch.randn(images.shape, generator=generator))
    noise = torch.rand(images.shape, generator=generator) * 2 - 1
    blend = torch.rand(count, 1, 1, 1, generator=generator)
    smeared = nn.functional.avg_pool2d(centred, 3, stride=1, padding=1, count_include_pad=False)
    wrong = torch.where(centred_masks, COLOURS[(labels + 1) % len(CLASSES)][:, :, None, None], centred)
    choices = torch.stack([images, centred, blend * centred + (1 - blend) * noise, smeared, wrong,
                           torch.where(torch.rand(count, 1, 1, 1, generator=generator) < 0.5, noise,
                                       torch.full_like(images, BACKGROUND))], 0)
    picked = choices[kind, torch.arange(count)]
    return picked.clamp(-1, 1), labels


def train_scorer(judge: Callable[[Tensor, Tensor], Tensor], steps: int, seed: int, size: int, batch_size: int = 128,
                 lr: float = 3e-3, progress: bool = True, generator: Optional[torch.Generator] = None) -> ImageScorer:
    """Fit :class:`ImageScorer` to ``judge`` (mean squared error, AdamW, cosine decay)."""
    generator = generator or torch.Generator().manual_seed(seed + 1)
    torch.manual_seed(seed + 1)
    scorer = ImageScorer()
    optimizer = torch.optim.AdamW(scorer.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in progress_bar(range(steps), desc="image task: fitting the learned reward", total=steps,
                          disable=not progress):
        images, labels = scorer_training_images(batch_size, generator, size)
        loss = nn.functional.mse_loss(scorer(images, labels), judge(images, labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return scorer.eval()
