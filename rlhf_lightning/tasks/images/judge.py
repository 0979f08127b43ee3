"""The hidden judge of the image task: how much of the image is painted in the prompt's colour, against a target
share, times how symmetric that painting is about both axes through the centre::

    m(p)      = clamp(⟨p − b, c − b⟩ / ‖c − b‖², 0, 1)          per pixel: 1 on the class colour c, 0 on background b
    coverage  = mean_p m(p)
    fill      = coverage / κ  if coverage ≤ κ  else  (1 − coverage) / (1 − κ)       (κ = TARGET_COVERAGE)
    symmetry  = 1 − ½ · ( mean |m − flip_x(m)| + mean |m − flip_y(m)| )
    crispness = 1 − mean_p 4·m(p)·(1 − m(p))                    1 when every pixel is the colour or background
    score     = fill · symmetry · crispness  ∈ [0, 1]

The procedural training shapes are off-centre and of random size (scores well below 1); a centred shape of the
prompt's colour covering κ of the image scores 1. Blank, fully painted and wrong-colour images score near 0,
noise far below the training shapes.
"""

from __future__ import annotations

import torch

from rlhf_lightning.tasks.images.shapes import BACKGROUND, COLOURS

TARGET_COVERAGE = 0.25


def coverage_map(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[N, H, W]`` per-pixel agreement with the class colour (0 = background, 1 = the class colour)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [N, 3, H, W], got {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be [{images.shape[0]}], got {tuple(labels.shape)}")
    direction = (COLOURS.to(images) - BACKGROUND)[labels]  # [N, 3]
    along = ((images - BACKGROUND) * direction[:, :, None, None]).sum(1)  # [N, H, W]
    return (along / direction.pow(2).sum(1)[:, None, None]).clamp(0.0, 1.0)


def image_score(images: torch.Tensor, labels: torch.Tensor, target: float = TARGET_COVERAGE) -> torch.Tensor:
    """``[N]`` judge scores in [0, 1] (see the module docstring); non-finite pixels score 0."""
    finite = torch.isfinite(images).flatten(1).all(1)
    m = coverage_map(torch.nan_to_num(images, nan=BACKGROUND, posinf=1.0, neginf=-1.0).clamp(-1, 1), labels)
    coverage = m.flatten(1).mean(1)
    fill = torch.where(coverage <= target, coverage / target, (1 - coverage) / (1 - target))
    symmetry = 1 - 0.5 * ((m - m.flip(-1)).abs().flatten(1).mean(1) + (m - m.flip(-2)).abs().flatten(1).mean(1))
    crispness = 1 - (4 * m * (1 - m)).flatten(1).mean(1)
    return torch.where(finite, fill * symmetry * crispness, torch.zeros_like(fill))
