"""``ArithmeticTask``: the embedded addition task as a prompt data module that builds itself."""

from __future__ import annotations

from typing import Literal, Optional

from rlhf_lightning.tasks.arithmetic.build import build_task
from rlhf_lightning.tasks.embedded import EmbeddedPromptTask


class ArithmeticTask(EmbeddedPromptTask):
    """Prompts ``"57+68="`` of the offline addition task with their ``answer`` column (``"125"``, read by the
    reward :func:`~rlhf_lightning.tasks.arithmetic.exact_answer` and shown as the reference response); builds
    (or reuses) the task under ``root`` first, so a recipe can point ``model.init_args.policy.path`` at
    ``<root>/sft`` and run on a fresh machine with no downloads.

    Args:
        root: cache directory of the built task.
        task_seed: seed of the task build (problems, SFT answers, SFT); separate from the run's seed.
        sft_steps: SFT warm-start steps of the build.
        batch_size: prompts per rollout batch (per process).
        max_prompt_length: prompts longer than this many tokens are an error or skipped.
        on_long_prompt: ``error`` or ``skip``.
        shuffle: shuffle training prompts each epoch.
        seed: shuffling seed (default: the run's ``seed_everything``).
    """

    reference_name = "answer"

    def __init__(self, root: str = "runs/.cache/arithmetic", task_seed: int = 0, sft_steps: int = 2000,
                 batch_size: int = 32, max_prompt_length: int = 16,
                 on_long_prompt: Literal["error", "skip"] = "error", shuffle: bool = True,
                 seed: Optional[int] = None) -> None:
        super().__init__(root, task_seed, sft_steps, batch_size, max_prompt_length, on_long_prompt, shuffle, seed)

    def build(self) -> None:
        build_task(self.root, self.task_seed, sft_steps=self.sft_steps)
