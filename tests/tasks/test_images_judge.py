"""The embedded image task's procedural shapes and hidden judge: hand-checked coverage, the ideal image scores 1,
the training shapes leave room to improve, and degenerate images (blank, fully painted, wrong colour, noise,
non-finite) score low."""

from __future__ import annotations

import pytest
import torch

from rlhf_lightning.tasks.images import CLASSES, COLOURS, TARGET_COVERAGE, coverage_map, draw_shapes, image_score
from rlhf_lightning.tasks.images.shapes import BACKGROUND, shape_masks

LABELS = torch.arange(len(CLASSES)).repeat(60)


def _centred(labels: torch.Tensor, radius: float, size: int = 16) -> torch.Tensor:
    n = labels.shape[0]
    centre = torch.full((n,), (size - 1) / 2)
    masks = shape_masks(labels, centre, centre, torch.full((n,), radius), size)[:, None]
    return torch.where(masks, COLOURS[labels][:, :, None, None], torch.full((n, 3, size, size), BACKGROUND))


def test_coverage_is_one_on_the_class_colour_and_zero_on_background_by_hand():
    image = torch.full((1, 3, 2, 2), BACKGROUND)
    image[0, :, 0, 0] = COLOURS[1]
    image[0, :, 1, 1] = (COLOURS[1] + BACKGROUND) / 2  # half way to the colour
    m = coverage_map(image, torch.tensor([1]))
    assert m[0].flatten().tolist() == pytest.approx([1.0, 0.0, 0.0, 0.5])
    # symmetry: 1 − ½(mean|m − flip_x m| + mean|m − flip_y m|); crispness: 1 − mean 4m(1 − m)
    coverage = 1.5 / 4  # above κ = 0.25: fill falls towards a fully painted image
    fill = (1 - coverage) / (1 - TARGET_COVERAGE)
    flip_x = torch.tensor([[0.0, 1.0], [0.5, 0.0]])
    flip_y = torch.tensor([[0.0, 0.5], [1.0, 0.0]])
    symmetry = 1 - 0.5 * ((m[0] - flip_x).abs().mean() + (m[0] - flip_y).abs().mean())
    crispness = 1 - (4 * m[0] * (1 - m[0])).mean()
    assert image_score(image, torch.tensor([1])).item() == pytest.approx((fill * symmetry * crispness).item())


def test_a_centred_shape_of_the_target_size_scores_one_and_training_shapes_leave_room():
    ideal = {0: 4.5, 1: 4.0, 2: 4.5}  # radius that paints a quarter of 16×16 in each class's shape
    for label, radius in ideal.items():
        labels = torch.tensor([label])
        assert image_score(_centred(labels, radius), labels).item() > 0.9
    data = image_score(draw_shapes(LABELS, torch.Generator().manual_seed(0)), LABELS)
    assert 0.3 < data.mean().item() < 0.6 and data.max().item() < 1.0


@pytest.mark.parametrize("name, make", [
    ("blank", lambda labels, g: torch.full((len(labels), 3, 16, 16), BACKGROUND)),
    ("fully painted", lambda labels, g: COLOURS[labels][:, :, None, None].expand(-1, -1, 16, 16).clone()),
    ("wrong colour", lambda labels, g: draw_shapes((labels + 1) % 3, g)),
    ("gaussian noise", lambda labels, g: torch.randn(len(labels), 3, 16, 16, generator=g).clamp(-1, 1)),
    ("uniform noise", lambda labels, g: torch.rand(len(labels), 3, 16, 16, generator=g) * 2 - 1),
    ("not finite", lambda labels, g: torch.full((len(labels), 3, 16, 16), float("nan"))),
])
def test_degenerate_images_score_well_below_the_training_shapes(name, make):
    g = torch.Generator().manual_seed(1)
    data = image_score(draw_shapes(LABELS, g), LABELS).mean().item()
    scores = image_score(make(LABELS, g), LABELS)
    assert torch.isfinite(scores).all() and scores.mean().item() < data - 0.2, name


def test_shapes_are_deterministic_in_the_generator_and_in_range():
    first = draw_shapes(LABELS, torch.Generator().manual_seed(3))
    assert torch.equal(first, draw_shapes(LABELS, torch.Generator().manual_seed(3)))
    assert first.shape == (len(LABELS), 3, 16, 16) and first.min() >= -1 and first.max() <= 1


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="images"):
        image_score(torch.zeros(2, 1, 16, 16), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        image_score(torch.zeros(2, 3, 16, 16), torch.tensor([0]))
