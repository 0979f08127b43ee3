"""Embedded image task: procedural coloured shapes, one class per "prompt", a tiny UNet pretrained on them, a
learned reward, and a hidden judge of how well an image shows its prompt's shape (colour share, symmetry,
crispness)."""

from rlhf_lightning.tasks.images.data import ImagePrompts, ImageShapesTask
from rlhf_lightning.tasks.images.judge import TARGET_COVERAGE, coverage_map, image_score
from rlhf_lightning.tasks.images.shapes import CLASSES, COLOURS, draw_shapes

__all__ = ["CLASSES", "COLOURS", "ImagePrompts", "ImageShapesTask", "TARGET_COVERAGE", "coverage_map", "draw_shapes",
           "image_score"]
