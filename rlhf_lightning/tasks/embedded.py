"""The shared part of the embedded tasks' prompt data modules: a task built locally on first use."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from rlhf_lightning.data.prompts import PromptDataModule
from rlhf_lightning.tasks.summarize.build import TaskFiles


class EmbeddedPromptTask(PromptDataModule):
    """Prompts of a task whose splits (``<root>/{train,validation,test}.jsonl``) and SFT warm start
    (``<root>/sft``, also the tokenizer) are built under ``root`` by :meth:`build` when missing, so that a recipe
    can point ``model.init_args.policy.path`` at ``<root>/sft`` and run on a fresh machine with no downloads.
    Subclasses set :attr:`reference_name` (the splits' column of reference responses) and implement
    :meth:`build`."""

    reference_name = "reference"

    def __init__(self, root: str, task_seed: int, sft_steps: int, batch_size: int, max_prompt_length: int,
                 on_long_prompt: Literal["error", "skip"], shuffle: bool, seed: Optional[int]) -> None:
        files = TaskFiles.at(root)
        super().__init__(train_file=str(files.train), tokenizer=str(files.sft), validation_file=str(files.validation),
                         test_file=str(files.test), prompt_column="prompt", reference_column=self.reference_name,
                         batch_size=batch_size, max_prompt_length=max_prompt_length,
                         on_long_prompt=on_long_prompt, shuffle=shuffle, seed=seed)
        self.root = Path(root)
        self.task_seed = task_seed
        self.sft_steps = sft_steps

    def build(self) -> None:
        """Build (or reuse) the task under :attr:`root`."""
        raise NotImplementedError

    def prepare_data(self) -> None:
        self.build()

    def setup(self, stage: Optional[str] = None) -> None:
        self.prepare_data()  # no-op when built; covers processes on nodes where prepare_data did not run
        super().setup(stage)
