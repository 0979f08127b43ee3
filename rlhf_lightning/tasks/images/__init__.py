"""Embedded image task (issue 17, in progress): procedural coloured shapes, one class per "prompt", and a hidden
judge of how well an image shows its prompt's shape (colour, size and centring)."""

from rlhf_lightning.tasks.images.judge import TARGET_COVERAGE, coverage_map, image_score
from rlhf_lightning.tasks.images.shapes import CLASSES, COLOURS, draw_shapes

__all__ = ["CLASSES", "COLOURS", "TARGET_COVERAGE", "coverage_map", "draw_shapes", "image_score"]
