"""``SummarizeTask``: the embedded summarisation task as a prompt data module that builds itself."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from rlhf_lightning.data.offline import PreferenceDataModule, SFTDataModule, UnpairedDataModule
from rlhf_lightning.tasks.embedded import EmbeddedPromptTask
from rlhf_lightning.tasks.summarize.build import TaskFiles, build_task


class SummarizeTask(EmbeddedPromptTask):
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
        seed: shuffling seed (default: the run's ``seed_everything``).
    """

    reference_name = "reference"

    def __init__(self, root: str = "runs/.cache/summarize", task_seed: int = 0, sft_steps: int = 1800,
                 batch_size: int = 32, max_prompt_length: int = 64,
                 on_long_prompt: Literal["error", "skip"] = "error", shuffle: bool = True,
                 seed: Optional[int] = None) -> None:
        super().__init__(root, task_seed, sft_steps, batch_size, max_prompt_length, on_long_prompt, shuffle, seed)

    def build(self) -> None:
        build_task(self.root, self.task_seed, sft_steps=self.sft_steps)


def ensure_base_model(root: str | Path, seed: int = 0) -> Path:
    """``<root>/base``: the task's tiny Llama at random initialisation with the task's tokenizer (the
    starting point of the pipeline's SFT stage); written with ``save_pretrained`` when missing."""
    import os

    import torch
    from transformers import AutoTokenizer

    from rlhf_lightning.tasks.summarize.sft import SFTConfig, make_model

    directory = Path(root) / "base"
    if (directory / "config.json").exists() and (directory / "model.safetensors").exists():
        return directory
    tokenizer = AutoTokenizer.from_pretrained(Path(root) / "sft")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = make_model(tokenizer, SFTConfig())
    tmp = directory.with_name(f".base.tmp-{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if not directory.exists():
        os.replace(tmp, directory)
    return directory


class _EmbeddedOffline:
    """Builds the task (and its preference set) in ``prepare_data`` before the files are read."""

    root: Path
    task_seed: int
    sft_steps: int
    label_noise: Optional[float] = None
    preference_seed: int = 0
    task_kind: str = "summarize"  # which embedded task (rlhf_lightning.tasks.summarize.preferences.TASK_KINDS)

    def prepare_data(self) -> None:
        from rlhf_lightning.tasks.summarize.preferences import preference_files, task_kind

        task_kind(self.task_kind).build_task(self.root, self.task_seed, sft_steps=self.sft_steps)
        ensure_base_model(self.root, self.task_seed)
        if self.label_noise is not None:
            preference_files(self.root, self.label_noise, self.preference_seed, task_seed=self.task_seed,
                             task_options={"sft_steps": self.sft_steps}, task=self.task_kind)

    def setup(self, stage: Optional[str] = None) -> None:
        self.prepare_data()  # no-op when built
        super().setup(stage)


class SummarizeSFTData(_EmbeddedOffline, SFTDataModule):
    """SFT on the embedded task's reference summaries (prompt → ``reference``), tokenizer of the task.
    ``prepare_data`` also writes ``<root>/base``, the randomly initialised model to fine-tune.

    Args:
        root: cache directory of the built task.
        task_seed: seed of the task build.
        sft_steps: SFT steps of the task's own warm-start model (part of the task build).
        batch_size: rows per batch.
        max_response_length: responses longer than this many tokens are skipped.
        shuffle: shuffle training rows each epoch.
        seed: shuffling seed (default: the run's ``seed_everything``).
    """

    def __init__(self, root: str = "runs/.cache/summarize", task_seed: int = 0, sft_steps: int = 1800,
                 batch_size: int = 64, max_response_length: int = 32, shuffle: bool = True, seed: Optional[int] = None) -> None:
        files = TaskFiles.at(root)
        super().__init__(train_file=str(files.train), tokenizer=str(files.sft), response_column="reference",
                         validation_file=str(files.validation), eval_prompt_file=str(files.test),
                         batch_size=batch_size, max_prompt_length=64, max_response_length=max_response_length,
                         shuffle=shuffle, seed=seed)
        self.root, self.task_seed, self.sft_steps = Path(root), task_seed, sft_steps


def _preference_set(module: _EmbeddedOffline, root: str, label_noise: float, preference_seed: int, task_seed: int,
                    sft_steps: int, batch_size: int, shuffle: bool, seed: int, unpaired: bool) -> None:
    """Initialise an embedded preference-set data module (pairs, or their unpaired labels)."""
    from rlhf_lightning.tasks.summarize.preferences import preference_dir

    files, folder = TaskFiles.at(root), preference_dir(root, label_noise, preference_seed)
    suffix = "_unpaired" if unpaired else ""
    super(_EmbeddedOffline, module).__init__(
        train_file=str(folder / f"train{suffix}.jsonl"), tokenizer=str(files.sft),
        validation_file=str(folder / f"validation{suffix}.jsonl"), eval_prompt_file=str(files.test),
        batch_size=batch_size, max_prompt_length=64, max_response_length=32, shuffle=shuffle, seed=seed)
    module.root, module.task_seed, module.sft_steps = Path(root), task_seed, sft_steps
    module.label_noise, module.preference_seed = label_noise, preference_seed


class SummarizePreferenceData(_EmbeddedOffline, PreferenceDataModule):
    """Preference pairs of the embedded task: two SFT samples per prompt ranked by the gold judge, the
    training labels flipped with probability ``label_noise`` (validation pairs are clean).

    Args:
        root: cache directory of the built task.
        label_noise: share of training pairs whose label is flipped (noisy human labels).
        preference_seed: seed of the preference set build.
        task_seed: seed of the task build.
        sft_steps: SFT steps of the task build.
        batch_size: pairs per batch.
        shuffle: shuffle training pairs each epoch.
        seed: shuffling seed (default: the run's ``seed_everything``).
    """

    def __init__(self, root: str = "runs/.cache/summarize", label_noise: float = 0.1, preference_seed: int = 0,
                 task_seed: int = 0, sft_steps: int = 1800, batch_size: int = 32, shuffle: bool = True,
                 seed: Optional[int] = None) -> None:
        _preference_set(self, root, label_noise, preference_seed, task_seed, sft_steps, batch_size, shuffle, seed,
                        unpaired=False)


class SummarizeUnpairedData(_EmbeddedOffline, UnpairedDataModule):
    """Unpaired (KTO) labels of the embedded task: each preference pair's chosen response is desirable,
    the rejected one undesirable (training labels as noisy as the pairs').

    Args: as :class:`SummarizePreferenceData`; ``batch_size`` counts rows.
    """

    def __init__(self, root: str = "runs/.cache/summarize", label_noise: float = 0.1, preference_seed: int = 0,
                 task_seed: int = 0, sft_steps: int = 1800, batch_size: int = 32, shuffle: bool = True,
                 seed: Optional[int] = None) -> None:
        _preference_set(self, root, label_noise, preference_seed, task_seed, sft_steps, batch_size, shuffle, seed,
                        unpaired=True)
