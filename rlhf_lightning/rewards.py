"""Reward sources: something that scores (prompt, response) pairs of text.

A reward source works on decoded text so that the policy and the reward model may use different
tokenizers. Sources that hold a model load it lazily in :meth:`RewardSource.setup`, on the
device the trainer chose.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
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


class _OneLogitClassifier:
    """A lazily loaded Hugging Face sequence-classification model with one output, scoring texts in batches."""

    truncation_side = "right"

    def __init__(self, path: str, batch_size: int, max_length: int, trust_remote_code: bool) -> None:
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
        self._tokenizer.truncation_side = self.truncation_side
        model = AutoModelForSequenceClassification.from_pretrained(
            self.path, trust_remote_code=self.trust_remote_code, use_safetensors=None)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self._tokenizer.pad_token_id
        self._model = model.to(device).eval().requires_grad_(False)

    @torch.no_grad()
    def _logits(self, texts: Sequence[str]) -> torch.Tensor:
        """The first logit of each text, ``[N]`` float32 on the CPU."""
        if self._model is None:
            self.setup(torch.device("cpu"))
        device = next(self._model.parameters()).device
        out = [torch.zeros(0)]
        for start in range(0, len(texts), self.batch_size):
            enc = self._tokenizer(list(texts[start:start + self.batch_size]), return_tensors="pt", padding=True,
                                  truncation=True, max_length=self.max_length).to(device)
            logits = self._model(**enc).logits  # [b, 1]
            out.append(logits[:, 0].float().cpu())
        return torch.cat(out)


class RewardModel(_OneLogitClassifier, RewardSource):
    """A Hugging Face sequence-classification model with one output (a Bradley–Terry reward model).

    Args:
        path: local model directory (``save_pretrained`` output) or hub id already in the local cache.
        batch_size: pairs scored per forward pass.
        max_length: truncation length for prompt + response, in the reward model's tokens.
        trust_remote_code: allow custom modelling code shipped with the model (off by default).
    """

    def __init__(self, path: str, batch_size: int = 32, max_length: int = 1024,
                 trust_remote_code: bool = False) -> None:
        super().__init__(path, batch_size, max_length, trust_remote_code)

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Encoded exactly as reward-model training encodes pairs (prompt tokens, response tokens, EOS;
        see :mod:`rlhf_lightning.data.encoding`), scored at the last real token."""
        from rlhf_lightning.critic import sequence_scores
        from rlhf_lightning.data.encoding import encode_prompt, encode_response

        if self._model is None:
            self.setup(torch.device("cpu"))
        device = next(self._model.parameters()).device
        rows = [(encode_prompt(self._tokenizer, p) + encode_response(self._tokenizer, r))[-self.max_length:]
                for p, r in zip(prompts, responses)]
        out = [torch.zeros(0)]
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            width = max(len(ids) for ids in chunk)
            ids = torch.full((len(chunk), width), self._tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, row in enumerate(chunk):
                ids[i, :len(row)] = torch.tensor(row)
                mask[i, :len(row)] = 1
            out.append(sequence_scores(self._model, ids.to(device), mask.to(device), 0).float().cpu())
        return torch.cat(out)


# ---------------------------------------------------------------------------- preference rewards
class PreferenceSource(RewardSource):
    """A reward from pairwise preferences (REBEL paper, Appendix C; SPO, Swamy et al., 2024).

    Subclasses give ``P(a ≻ b | x)`` in :meth:`preference`, with ``P(a ≻ b) + P(b ≻ a) = 1``. The
    reward of response ``y_i`` in a group of ``k ≥ 2`` responses to the same prompt is its mean win
    probability against the others::

        r(x, y_i) = 1/(k − 1) · Σ_{j ≠ i} P(y_i ≻ y_j | x)

    an unbiased estimate of SPO's reward ``P(y_i ≻ π_t | x) = E_{y′ ~ π_t} P(y_i ≻ y′ | x)`` when the
    other responses are samples of ``π_t`` (with hybrid pairs the data-set response is the opponent).
    With a pair, ``r(y) = P(y ≻ y′)`` and ``r(y′) = 1 − r(y)``. Each unordered pair of a group is
    queried once (``a`` the earlier row) and ``P(y_j ≻ y_i)`` is taken as ``1 − P(y_i ≻ y_j)``. A
    preference reward cannot score a single response: :meth:`score` raises.
    """

    @abstractmethod
    def preference(self, prompts: Sequence[str], responses_a: Sequence[str],
                   responses_b: Sequence[str]) -> torch.Tensor:
        """``P(a ≻ b | x)`` for each triple, shape ``[N]``, values in ``[0, 1]``."""

    def _needs_groups(self, asked: str) -> RecipeError:
        return RecipeError(
            "model.init_args.reward",
            f"{type(self).__name__} is a preference reward: it scores each response against the other responses "
            f"to the same prompt, so it needs ≥ 2 samples per prompt; it was asked to score {asked}",
            "use an objective with ≥ 2 samples per prompt (e.g. REBEL, OnlineDPO), and give evaluation callbacks a "
            "pointwise judge (trainer.callbacks[WinRateEvaluation].init_args.judge, e.g. the task's GoldJudge)")

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        raise self._needs_groups("single responses (pointwise, as an evaluation judge does)")

    def score_groups(self, prompts: Sequence[str], responses: Sequence[str], group_size: int) -> torch.Tensor:
        if group_size < 2:
            raise self._needs_groups(f"groups of {group_size} response per prompt")
        n = len(responses)
        if len(prompts) != n or n % group_size:
            raise ValueError(f"got {len(prompts)} prompts and {n} responses for groups of {group_size}")
        first, second = torch.triu_indices(group_size, group_size, offset=1)  # [M] pairs i < j of a group
        starts = torch.arange(0, n, group_size)  # [B]
        rows_a = (starts[:, None] + first[None, :]).reshape(-1)  # [B·M]
        rows_b = (starts[:, None] + second[None, :]).reshape(-1)
        p = self.preference([prompts[i] for i in rows_a.tolist()], [responses[i] for i in rows_a.tolist()],
                            [responses[i] for i in rows_b.tolist()])
        p = torch.as_tensor(p, dtype=torch.float32).detach().cpu().reshape(-1)
        if p.shape[0] != rows_a.shape[0]:
            raise ValueError(f"{type(self).__name__}.preference returned {p.shape[0]} values for "
                             f"{rows_a.shape[0]} pairs")
        wins = torch.zeros(n).index_add_(0, rows_a, p).index_add_(0, rows_b, 1.0 - p)  # [N]
        return wins / (group_size - 1)


def symmetrised(p_ab: torch.Tensor, p_ba: torch.Tensor) -> torch.Tensor:
    """``½·(P(a ≻ b) + 1 − P(b ≻ a))``: removes a judge's position bias, so the result plus its swap is 1."""
    return 0.5 * (p_ab + 1.0 - p_ba)


class FunctionPreference(PreferenceSource):
    """Preferences from a Python function ``fn(prompts, responses_a, responses_b) -> list[float]``
    giving ``P(a ≻ b | x)`` per triple (e.g. a rule or a call to an LLM judge).

    Args:
        function: dotted path of the function, e.g. ``my_judges.prefer_shorter``.
        symmetrise: ask both orders and use ``½·(f(a, b) + 1 − f(b, a))``, which removes position
            bias (off: one call per pair, trusting ``f(a, b) + f(b, a) = 1``).
    """

    def __init__(self, function: str, symmetrise: bool = True) -> None:
        self.function = function
        self.symmetrise = symmetrise
        self._fn: Callable | None = None

    def setup(self, device: torch.device) -> None:
        field = "model.init_args.reward.init_args.function"
        fn = import_object(self.function, field)
        if not callable(fn):
            raise RecipeError(field, f"'{self.function}' is not callable")
        self._fn = fn

    def _call(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
        values = torch.as_tensor(self._fn(list(prompts), list(a), list(b)), dtype=torch.float32).reshape(-1)
        if values.shape[0] != len(a) or not bool(((values >= 0) & (values <= 1)).all()):
            raise ValueError(f"preference function '{self.function}' must return {len(a)} probabilities in "
                             f"[0, 1]; got {values.tolist()[:8]}")
        return values

    def preference(self, prompts: Sequence[str], responses_a: Sequence[str],
                   responses_b: Sequence[str]) -> torch.Tensor:
        if self._fn is None:
            self.setup(torch.device("cpu"))
        p_ab = self._call(prompts, responses_a, responses_b)
        if not self.symmetrise:
            return p_ab
        return symmetrised(p_ab, self._call(prompts, responses_b, responses_a))


class PreferenceModel(_OneLogitClassifier, PreferenceSource):
    r"""A pairwise preference model: a Hugging Face sequence-classification directory with one logit.

    The model reads one text per ordered pair::

        prompt + response_a + "\n\nversus\n\n" + response_b

    and ``σ(logit)`` is the probability that ``response_a`` is preferred. Both orders are scored
    and symmetrised, ``P(a ≻ b) = ½·(σ(f(a, b)) + 1 − σ(f(b, a)))``, so ``P(a ≻ b) + P(b ≻ a) = 1``
    whatever the model's position bias. Texts longer than ``max_length`` lose tokens from the start
    (the prompt), never the responses. Train such a model, or subclass and override :meth:`format`
    to match the input format of an existing one.

    Args:
        path: local model directory (``save_pretrained`` output) or hub id already in the local cache.
        batch_size: texts scored per forward pass.
        max_length: truncation length of the text above, in the model's tokens.
        trust_remote_code: allow custom modelling code shipped with the model (off by default).
    """

    separator = "\n\nversus\n\n"
    truncation_side = "left"

    def __init__(self, path: str, batch_size: int = 32, max_length: int = 1024,
                 trust_remote_code: bool = False) -> None:
        super().__init__(path, batch_size, max_length, trust_remote_code)

    def setup(self, device: torch.device) -> None:
        super().setup(device)
        labels = self._model.config.num_labels
        if labels != 1:
            raise RecipeError("model.init_args.reward.init_args.path",
                              f"a preference model has one output (the logit of P(a ≻ b)); "
                              f"'{self.path}' has {labels}",
                              "save it with num_labels=1")

    def format(self, prompt: str, response_a: str, response_b: str) -> str:
        """The text the model scores for the ordered pair ``(a, b)``."""
        return prompt + response_a + self.separator + response_b

    def preference(self, prompts: Sequence[str], responses_a: Sequence[str],
                   responses_b: Sequence[str]) -> torch.Tensor:
        forward = [self.format(x, a, b) for x, a, b in zip(prompts, responses_a, responses_b)]
        backward = [self.format(x, b, a) for x, a, b in zip(prompts, responses_a, responses_b)]
        logits = self._logits(forward + backward)  # [2N]
        p_ab, p_ba = torch.sigmoid(logits).split(len(forward))
        return symmetrised(p_ab, p_ba)
