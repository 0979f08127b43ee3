"""Rewards for images: ``r(image, prompt)`` for a batch of generated images ``[N, 3, H, W]`` in ``[-1, 1]``, their
prompts' class ids ``[N]`` and prompt texts. A reward is named in a recipe by ``class_path`` (as the text path's
reward sources): a Python function (:class:`ImageFunctionReward`) or a learned scorer (:class:`LearnedImageReward`,
the embedded task's default). Their output is checked: one finite number per image.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from rlhf_lightning.errors import RecipeError
from rlhf_lightning.guards import RewardFailed
from rlhf_lightning.imports import import_object
from rlhf_lightning.rewards import checked_scores

FIELD = "model.init_args.reward"


class ImageReward(ABC):
    """A reward of generated images; :meth:`score` returns ``[N]`` floats."""

    def setup(self, device: torch.device) -> None:
        """Load what scoring needs (called once, before training)."""

    @property
    def name(self) -> str:
        return type(self).__name__

    @abstractmethod
    def score(self, images: Tensor, labels: Tensor, prompts: Sequence[str]) -> Tensor:
        """``[N]`` rewards of ``images`` (``[N, 3, H, W]`` in ``[-1, 1]``) for prompts ``labels``/``prompts``."""

    def checked_score(self, images: Tensor, labels: Tensor, prompts: Sequence[str]) -> Tensor:
        """:meth:`score`, checked: ``[N]`` numbers (another shape is a :class:`RecipeError` naming the reward)."""
        return checked_scores(self.score(images, labels, prompts), images.shape[0], self, "score", unit="image")


class ImageFunctionReward(ImageReward):
    """Reward from a Python function ``fn(images, labels) -> [N]`` (a tensor, array or list), or
    ``fn(images, labels, prompts)`` when it has a parameter named ``prompts`` (the prompt texts); e.g. the embedded task's hidden judge
    ``rlhf_lightning.tasks.images.image_score``.

    Args:
        function: dotted path of the function.
    """

    def __init__(self, function: str) -> None:
        self.function = function
        self._fn: Optional[Callable] = None

    @property
    def name(self) -> str:
        return self.function.rpartition(".")[2]

    def setup(self, device: torch.device) -> None:
        field = f"{FIELD}.init_args.function"
        fn = import_object(self.function, field)
        if not callable(fn):
            raise RecipeError(field, f"'{self.function}' is not callable")
        try:
            parameters = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            parameters = []
        positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if parameters and len(positional) < 2 and not any(p.kind == p.VAR_POSITIONAL for p in parameters):
            raise RecipeError(field, f"'{self.function}' takes {inspect.signature(fn)}, but an image reward is called "
                              "as fn(images, labels) or fn(images, labels, prompts)",
                              "give it the parameters (images, labels), images [N, 3, H, W] in [-1, 1]")
        self._takes_prompts = any(p.name == "prompts" for p in parameters)
        self._fn = fn

    def score(self, images: Tensor, labels: Tensor, prompts: Sequence[str]) -> Tensor:
        if self._fn is None:
            self.setup(images.device)
        try:
            values = (self._fn(images, labels, prompts=list(prompts)) if self._takes_prompts else self._fn(images, labels))
        except Exception as error:  # the user's code: one message naming it and where it raised
            raise RewardFailed(self.function, error) from None
        return values.to(images.device) if isinstance(values, Tensor) else values


class LearnedImageReward(ImageReward):
    """A learned scorer saved by :meth:`~rlhf_lightning.tasks.images.scorer.ImageScorer.save` (the embedded
    task's stand-in for an aesthetic predictor), run without gradients in float32.

    Args:
        path: the scorer's directory (``scorer.json`` + ``model.safetensors``).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._model: Any = None

    @property
    def name(self) -> str:
        return "learned_scorer"

    def setup(self, device: torch.device) -> None:
        from pathlib import Path

        from rlhf_lightning.tasks.images.scorer import ImageScorer

        if not (Path(self.path) / "scorer.json").is_file():
            raise RecipeError(f"{FIELD}.init_args.path", f"no learned image scorer at '{self.path}' (scorer.json and "
                              "model.safetensors)", "point it at <task root>/scorer, built by the image task")
        self._model = ImageScorer.load(self.path).to(device)

    @torch.no_grad()
    def score(self, images: Tensor, labels: Tensor, prompts: Sequence[str]) -> Tensor:
        if self._model is None:
            self.setup(images.device)
        return self._model(images.float(), labels)


def uint8_pixels(images: Tensor) -> Tensor:
    """Images in ``[-1, 1]`` as 8-bit pixels (``0 … 255``), channels first."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def jpeg_compressibility(images: Tensor, labels: Tensor, quality: int = 95) -> Tensor:
    """DDPO's compressibility reward (Black et al., 2023): minus each image's JPEG size in kB (at ``quality``), so a
    higher reward is a simpler image; needs no model. Use ``-jpeg_compressibility`` (a function of your own) for
    incompressibility."""
    import io

    from PIL import Image

    pixels = uint8_pixels(images).permute(0, 2, 3, 1).cpu()
    sizes = []
    for image in pixels.numpy():
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        sizes.append(buffer.tell() / 1000.0)
    return -torch.tensor(sizes, dtype=torch.float32)


def probe_problem(reward: ImageReward, channels: int, resolution: int, labels: Tensor,
                  device: torch.device) -> Optional[RecipeError]:
    """Score two noise images once, before training: the reward must give two finite numbers."""
    images = torch.rand(2, channels, resolution, resolution, generator=torch.Generator().manual_seed(0)) * 2 - 1
    scores = reward.checked_score(images.to(device), labels[:2].to(device), ["probe"] * 2)
    if not torch.isfinite(scores).all():
        return RecipeError(FIELD, f"{reward.name} returned {scores.tolist()} for two noise images: the rewards must be "
                           "finite", "make the reward return finite numbers for any image in [-1, 1]")
    return None
