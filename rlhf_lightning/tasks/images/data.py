"""Prompt data for image policies: batches of prompts as ``{"labels": [B] class ids, "prompt": [B] texts}``.

:class:`ImagePrompts` takes any list of prompts (a class-conditional UNet reads the ids, a text-conditional one the
texts); :class:`ImageShapesTask` is the embedded task, which builds its pipeline and learned reward first.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from rlhf_lightning.data.base import ResumableTrainLoader
from rlhf_lightning.errors import RecipeError, raise_all
from rlhf_lightning.tasks.images.shapes import CLASSES


class ImagePrompts(ResumableTrainLoader, LightningDataModule):
    """Each epoch shows every prompt ``repeats`` times, shuffled, in batches of ``batch_size`` prompts. The order
    resumes mid-epoch from a checkpoint, and under several processes each rank takes its own share of the epoch
    (:class:`~rlhf_lightning.data.base.ResumableShuffleSampler`).

    Args:
        prompts: the prompts, e.g. the REBEL paper's 45 animal names; a prompt's class id is its index.
        repeats: times each prompt appears per epoch.
        batch_size: prompts per rollout batch (per process).
        shuffle: shuffle each epoch (seeded by ``seed``).
        seed: shuffling seed.
    """

    def __init__(self, prompts: Sequence[str], repeats: int = 64, batch_size: int = 8, shuffle: bool = True,
                 seed: int = 0) -> None:
        super().__init__()
        raise_all([RecipeError(f"data.init_args.{key}", problem, fix) for key, ok, problem, fix in (
            ("prompts", len(prompts) >= 1, "must hold at least one prompt", "e.g. [cat, dog, horse]"),
            ("repeats", isinstance(repeats, int) and repeats >= 1, f"must be an integer ≥ 1, got {repeats!r}", ""),
            ("batch_size", isinstance(batch_size, int) and batch_size >= 1,
             f"must be an integer ≥ 1, got {batch_size!r}", "e.g. 8")) if not ok])
        self.prompts = list(prompts)
        self.repeats, self.batch_size, self.shuffle, self.seed = repeats, batch_size, shuffle, seed

    @property
    def num_prompts(self) -> int:
        return len(self.prompts)

    def collate(self, indices: list[int]) -> dict:
        return {"labels": torch.tensor(indices, dtype=torch.long), "prompt": [self.prompts[i] for i in indices]}

    def train_dataloader(self) -> DataLoader:
        indices = [index % self.num_prompts for index in range(self.repeats * self.num_prompts)]
        return self.resumable_loader(indices, self.collate, "data.init_args.prompts × repeats")

    def state_dict(self) -> dict:
        """Where training is in the epoch (saved in checkpoints)."""
        return self.train_position()

    def load_state_dict(self, state: dict) -> None:
        self.resume_train_position(state)


class ImageShapesTask(ImagePrompts):
    """The embedded image task: prompts :data:`~rlhf_lightning.tasks.images.shapes.CLASSES` (ids 0, 1, 2), with
    the tiny pretrained UNet at ``<root>/pipeline`` and the learned reward at ``<root>/scorer``, built under
    ``root`` on first use (see :mod:`rlhf_lightning.tasks.images.build`).

    Args:
        root: cache directory of the built task.
        task_seed: seed of the build (separate from the run's seed).
        unet_steps: pretraining steps of the tiny UNet.
        scorer_steps: fitting steps of the learned reward.
        repeats, batch_size, shuffle, seed: as :class:`ImagePrompts`.
    """

    def __init__(self, root: str = "runs/.cache/images", task_seed: int = 0, unet_steps: int = 1500,
                 scorer_steps: int = 600, repeats: int = 64, batch_size: int = 8, shuffle: bool = True,
                 seed: int = 0) -> None:
        super().__init__(CLASSES, repeats=repeats, batch_size=batch_size, shuffle=shuffle, seed=seed)
        self.root, self.task_seed, self.unet_steps, self.scorer_steps = root, task_seed, unet_steps, scorer_steps

    def prepare_data(self) -> None:
        from rlhf_lightning.tasks.images.build import build_image_task

        build_image_task(self.root, self.task_seed, unet_steps=self.unet_steps, scorer_steps=self.scorer_steps)

    def setup(self, stage: Optional[str] = None) -> None:
        self.prepare_data()  # no-op once built; covers processes where prepare_data did not run
