"""``HeadlineTask`` and ``HeadlinePreferenceData``: the headline task as data modules that build it."""

from __future__ import annotations

from typing import Literal, Optional

from rlhf_lightning.tasks.embedded import EmbeddedPromptTask
from rlhf_lightning.tasks.headline.build import build_task
from rlhf_lightning.tasks.summarize.data import SummarizePreferenceData


class HeadlineTask(EmbeddedPromptTask):
    """Prompts ``"post: ... headline:"`` of the offline headline task with the editors' headlines as the
    reference column; builds (or reuses) the task under ``root`` first, so a recipe can point
    ``model.init_args.policy.path`` at ``<root>/sft`` and run on a fresh machine with no downloads.

    Args:
        root: cache directory of the built task.
        task_seed: seed of the task build (posts, SFT headlines, SFT); separate from the run's seed.
        sft_steps: SFT warm-start steps of the build.
        batch_size: prompts per rollout batch (per process).
        max_prompt_length: prompts longer than this many tokens are an error or skipped.
        on_long_prompt: ``error`` or ``skip``.
        shuffle: shuffle training prompts each epoch.
        seed: shuffling seed (default: the run's ``seed_everything``).
    """

    def __init__(self, root: str = "runs/.cache/headline", task_seed: int = 0, sft_steps: int = 1500,
                 batch_size: int = 32, max_prompt_length: int = 64,
                 on_long_prompt: Literal["error", "skip"] = "error", shuffle: bool = True,
                 seed: Optional[int] = None) -> None:
        super().__init__(root, task_seed, sft_steps, batch_size, max_prompt_length, on_long_prompt, shuffle, seed)

    def build(self) -> None:
        build_task(self.root, self.task_seed, sft_steps=self.sft_steps)


class HeadlinePreferenceData(SummarizePreferenceData):
    """Preference pairs of the headline task: two SFT samples per prompt ranked by its gold judge
    (:class:`~.judge.HeadlineJudge`), training labels flipped with probability ``label_noise``.

    Args: as :class:`~rlhf_lightning.tasks.summarize.SummarizePreferenceData` (``sft_steps``: the headline
    task's build).
    """

    task_kind = "headline"

    def __init__(self, root: str = "runs/.cache/headline", label_noise: float = 0.1, preference_seed: int = 0,
                 task_seed: int = 0, sft_steps: int = 1500, batch_size: int = 32, shuffle: bool = True,
                 seed: Optional[int] = None) -> None:
        super().__init__(root, label_noise, preference_seed, task_seed, sft_steps, batch_size, shuffle, seed)
