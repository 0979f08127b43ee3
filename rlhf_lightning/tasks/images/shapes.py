"""Procedural training images: a shape of the prompt's class and colour on a dark, slightly noisy background, at a
random position and size, in [-1, 1] (channels first)."""

from __future__ import annotations

from typing import Optional

import torch

CLASSES = ("a red circle", "a blue square", "a green cross")
COLOURS = torch.tensor([[1.0, -0.6, -0.6], [-0.6, -0.6, 1.0], [-0.6, 1.0, -0.6]])  # RGB in [-1, 1], per class
BACKGROUND = -0.8


def shape_masks(labels: torch.Tensor, centre_x: torch.Tensor, centre_y: torch.Tensor, radius: torch.Tensor,
                size: int) -> torch.Tensor:
    """``[N, size, size]`` boolean masks: class 0 a disc, 1 a square, 2 a cross (arms a third of the radius)."""
    grid = torch.arange(size, dtype=torch.float32)
    dx = (grid[None, None, :] - centre_x[:, None, None]).abs()
    dy = (grid[None, :, None] - centre_y[:, None, None]).abs()
    r = radius[:, None, None]
    disc = dx ** 2 + dy ** 2 <= r ** 2
    square = (dx <= r) & (dy <= r)
    cross = ((dx <= r / 3) & (dy <= r)) | ((dy <= r / 3) & (dx <= r))
    label = labels[:, None, None]
    return torch.where(label == 0, disc, torch.where(label == 1, square, cross))


def draw_shapes(labels: torch.Tensor, generator: Optional[torch.Generator] = None, size: int = 16,
                min_radius: float = 2.0, max_radius: float = 5.0) -> torch.Tensor:
    """``[N, 3, size, size]`` images of the classes in ``labels`` (``[N]`` ints in ``range(len(CLASSES))``), each
    shape at a random centre within 3 pixels of the border and a random radius."""
    n = labels.shape[0]
    centre_x = torch.randint(3, size - 3, (n,), generator=generator).float()
    centre_y = torch.randint(3, size - 3, (n,), generator=generator).float()
    radius = min_radius + (max_radius - min_radius) * torch.rand(n, generator=generator)
    images = BACKGROUND + 0.05 * torch.randn(n, 3, size, size, generator=generator)
    masks = shape_masks(labels, centre_x, centre_y, radius, size)[:, None]  # [N, 1, S, S]
    images = torch.where(masks, COLOURS[labels][:, :, None, None], images)
    return images.clamp(-1.0, 1.0)
