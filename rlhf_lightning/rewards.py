"""Reward sources: something that scores (prompt, response) pairs of text.

A reward source works on decoded text so that the policy and the reward model may use different
tokenizers. Sources that hold a model load it lazily in :meth:`RewardSource.setup`, on the
device the trainer chose.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Sequence

import torch

from rlhf_lightning.errors import RecipeError


class RewardSource(ABC):
    """Base class: ``score(prompts, responses) -> Tensor[N]`` (float32, one reward per pair)."""

    def setup(self, device: torch.device) -> None:
        """Load models and move them to ``device``; called once by ``RLHFModule`` before training."""

    @abstractmethod
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Rewards ``r(x, y)`` for each pair, shape ``[N]``."""

    def score_groups(self, prompts: Sequence[str], responses: Sequence[str], group_size: int) -> torch.Tensor:
        """Rewards for rows that come in groups of ``group_size`` responses to the same prompt.

        Pointwise sources ignore the grouping; preference sources compare the responses of a group.
        """
        return self.score(prompts, responses)


def import_object(dotted: str, field: str) -> object:
    """Import ``package.module.name``; a bad path is a :class:`RecipeError` naming ``field``."""
    module_name, _, attribute = dotted.rpartition(".")
    if not module_name:
        raise RecipeError(field, f"'{dotted}' is not a dotted path", "write it as package.module.function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise RecipeError(field, f"cannot import module '{module_name}' ({error})",
                          "check the spelling and that the module is on PYTHONPATH") from None
    if not hasattr(module, attribute):
        raise RecipeError(field, f"module '{module_name}' has no attribute '{attribute}'",
                          "check the function name")
    return getattr(module, attribute)


class FunctionReward(RewardSource):
    """Reward from a Python function ``fn(prompts: list[str], responses: list[str]) -> list[float]``.

    Args:
        function: dotted path of the function, e.g. ``my_rewards.length_bonus``.
    """

    def __init__(self, function: str) -> None:
        self.function = function
        self._fn: Callable | None = None

    def setup(self, device: torch.device) -> None:
        fn = import_object(self.function, "model.init_args.reward.init_args.function")
        if not callable(fn):
            raise RecipeError("model.init_args.reward.init_args.function", f"'{self.function}' is not callable")
        self._fn = fn

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        if self._fn is None:
            self.setup(torch.device("cpu"))
        values = self._fn(list(prompts), list(responses))
        return torch.as_tensor(values, dtype=torch.float32).reshape(len(responses))


class RewardModel(RewardSource):
    """A Hugging Face sequence-classification model with one output (a Bradley–Terry reward model).

    Args:
        path: local model directory (``save_pretrained`` output) or hub id already in the local cache.
        batch_size: pairs scored per forward pass.
        max_length: truncation length for prompt + response, in the reward model's tokens.
        trust_remote_code: allow custom modelling code shipped with the model (off by default).
    """

    def __init__(self, path: str, batch_size: int = 32, max_length: int = 1024,
                 trust_remote_code: bool = False) -> None:
        self.path = path
        self.batch_size = batch_size
        self.max_length = max_length
        self.trust_remote_code = trust_remote_code
        self._model = None
        self._tokenizer = None

    def setup(self, device: torch.device) -> None:
        from transformers import AutoModelForSequenceClassification

        from rlhf_lightning.models import check_model_path, load_tokenizer

        field = "model.init_args.reward.init_args.path"
        check_model_path(self.path, field)
        self._tokenizer = load_tokenizer(self.path, field, trust_remote_code=self.trust_remote_code,
                                         padding_side="right")
        model = AutoModelForSequenceClassification.from_pretrained(
            self.path, trust_remote_code=self.trust_remote_code, use_safetensors=None)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self._tokenizer.pad_token_id
        self._model = model.to(device).eval().requires_grad_(False)

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        if self._model is None:
            self.setup(torch.device("cpu"))
        device = next(self._model.parameters()).device
        out = []
        texts = [p + r for p, r in zip(prompts, responses)]
        for start in range(0, len(texts), self.batch_size):
            enc = self._tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                  truncation=True, max_length=self.max_length).to(device)
            logits = self._model(**enc).logits  # [b, 1]
            out.append(logits[:, 0].float().cpu())
        return torch.cat(out)
