"""``SummarizeTask``: the embedded summarisation task as a prompt data module that builds itself."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from rlhf_lightning.data.prompts import PromptDataModule
from rlhf_lightning.tasks.summarize.build import TaskFiles, build_task


class SummarizeTask(PromptDataModule):
    """Prompts of the offline TL;DR-style task; builds (or reuses) the task under ``root`` first.

    ``prepare_data`` writes the splits and the SFT warm-start model (``<root>/sft``, also the
    tokenizer) when they are missing, so a recipe can point ``model.init_args.policy.path`` at
    ``<root>/sft`` and run on a fresh machine with no downloads.

    Args:
        root: cache directory of the built task.
        task_seed: seed of the task build (corpus, tokenizer, SFT); separate from the run's seed so
            that different training seeds share one task.
        sft_steps: SFT warm-start steps of the build.
        batch_size: prompts per rollout batch (per process).
        max_prompt_length: prompts longer than this many tokens are an error or skipped.
        on_long_prompt: ``error`` or ``skip``.
        shuffle: shuffle training prompts each epoch.
        seed: shuffling seed.
    """

    def __init__(self, root: str = "runs/.cache/summarize", task_seed: int = 0, sft_steps: int = 1800,
                 batch_size: int = 32, max_prompt_length: int = 64,
                 on_long_prompt: Literal["error", "skip"] = "error", shuffle: bool = True, seed: int = 0) -> None:
        files = TaskFiles.at(root)
        super().__init__(train_file=str(files.train), tokenizer=str(files.sft), validation_file=str(files.validation),
                         test_file=str(files.test), prompt_column="prompt", reference_column="reference",
                         batch_size=batch_size, max_prompt_length=max_prompt_length,
                         on_long_prompt=on_long_prompt, shuffle=shuffle, seed=seed)
        self.root = Path(root)
        self.task_seed = task_seed
        self.sft_steps = sft_steps

    def prepare_data(self) -> None:
        build_task(self.root, self.task_seed, sft_steps=self.sft_steps)

    def setup(self, stage: Optional[str] = None) -> None:
        self.prepare_data()  # no-op when built; covers processes on nodes where prepare_data did not run
        super().setup(stage)
