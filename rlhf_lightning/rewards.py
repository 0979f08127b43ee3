"""Reward sources: something that scores (prompt, response) pairs of text, seeing the data's other columns.

A reward source works on decoded text so that the policy and the reward model may use different
tokenizers. Every source is called as ``score(prompts, responses, **columns)``: ``columns`` holds
every other column of the prompt data set by name (``answer``, ``tests``, ...), as lists aligned
with the responses, so a verifiable reward can check a response against the data. A source takes
only the columns it names (or all of them with ``**kwargs``). Sources that hold a model load it
lazily in :meth:`RewardSource.setup`, on the device the trainer chose. ``model.init_args.reward``
may also be a list of :class:`RewardTerm` (weighted sources, summed by :class:`WeightedRewards`).
"""

from __future__ import annotations

import functools
import inspect
import math
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch

from rlhf_lightning.errors import RecipeError, raise_all
from rlhf_lightning.guards import RewardFailed
from rlhf_lightning.imports import import_object

Columns = Mapping[str, Sequence[Any]]
RESERVED_COLUMNS = ("prompts", "responses", "group_size")  # argument names of the reward call itself
RESERVED_PART_NAMES = ("raw", "shaped")  # reward/raw and reward/shaped are the rollout's own metrics


def accepted_columns(fn: Callable, columns: Columns, skip: int = 2) -> dict[str, Sequence[Any]]:
    """The columns ``fn`` takes after its first ``skip`` parameters (prompts, responses, ...): all of them when
    it has ``**kwargs``, else the ones it names. A column named like one of those first parameters is left
    out (it would clash with the argument itself)."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return dict(columns)
    positional = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:skip]
    columns = {key: value for key, value in columns.items() if key not in positional}
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return columns
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {key: value for key, value in columns.items() if key in names}


def required_columns(fn: Callable, skip: int = 2) -> list[str]:
    """Parameters of ``fn`` after the first ``skip`` (prompts, responses) that have no default: the data
    columns it cannot run without."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return []
    named = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return [p.name for p in named[skip:] if p.default is p.empty]


def win_rate(scores: torch.Tensor, other_scores: torch.Tensor) -> float:
    """Share of pairs where ``scores`` beats ``other_scores``; ties count ½."""
    wins = (scores > other_scores).float() + 0.5 * (scores == other_scores).float()
    return wins.mean().item()


class RewardSource(ABC):
    """Base class: ``score(prompts, responses, **columns) -> Tensor[N]`` (float32, one reward per pair).

    What a source returns is checked where the rollout and the evaluation call it (:meth:`score_terms`, also
    when a subclass overrides it): anything but ``N`` numbers (shape ``[N]``, or ``[N, 1]``) is a
    :class:`RecipeError` naming the class, not PyTorch's reshape error.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("score_terms")
        if own is not None and not getattr(own, "_checks_shape", False):  # an override is checked as well
            @functools.wraps(own)
            def score_terms(self, prompts, responses, group_size, **columns):
                scores, parts = own(self, prompts, responses, group_size, **columns)
                count = len(responses)
                return (checked_scores(scores, count, self, "score_terms"),
                        {name: checked_scores(part, count, self, "score_terms") for name, part in parts.items()})

            score_terms._checks_shape = True
            cls.score_terms = score_terms

    def setup(self, device: torch.device) -> None:
        """Load models and move them to ``device``; called once by ``RLHFModule`` before training."""

    @property
    def name(self) -> str:
        """How the source's part of a reward sum is logged (``reward/<name>``)."""
        return type(self).__name__

    @abstractmethod
    def score(self, prompts: Sequence[Any], responses: Sequence[str], **columns: Sequence[Any]) -> torch.Tensor:
        """Rewards ``r(x, y)`` for each pair, shape ``[N]``."""

    def score_groups(self, prompts: Sequence[Any], responses: Sequence[str], group_size: int,
                     **columns: Sequence[Any]) -> torch.Tensor:
        """Rewards for rows that come in groups of ``group_size`` responses to the same prompt.

        Pointwise sources ignore the grouping; preference sources compare the responses of a group.
        """
        return self.score(prompts, responses, **accepted_columns(self.score, columns))

    def score_terms(self, prompts: Sequence[Any], responses: Sequence[str], group_size: int,
                    **columns: Sequence[Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The reward ``[N]`` and its named parts (empty for a single source; see :class:`WeightedRewards`)."""
        scores = self.score_groups(prompts, responses, group_size, **accepted_columns(self.score_groups, columns))
        method = "score_groups" if type(self).score_groups is not RewardSource.score_groups else "score"
        return checked_scores(scores, len(responses), self, method), {}

    score_terms._checks_shape = True

    def best_responses(self, prompts: Sequence[Any]) -> Optional[list[str]]:
        """The response this source scores highest for each prompt, when it is known (a synthetic task's oracle):
        the evaluation then reports ``oracle_reward``, the most a policy can reach. ``None`` (the default):
        unknown."""
        return None

    def missing_columns(self, available: Sequence[str]) -> list[str]:
        """Data columns this source needs that ``available`` lacks (checked before training)."""
        return [name for name in required_columns(self.score) if name not in available]


class FunctionReward(RewardSource):
    """Reward from a Python function ``fn(prompts, responses, **columns) -> list[float]``.

    ``prompts`` are the data set's prompts (text, or chat messages), ``responses`` the decoded
    responses, and each further parameter the function names is filled with that column of the
    prompt data (aligned with the responses), e.g. ``def correct(prompts, responses, answer, **_)``.

    Args:
        function: dotted path of the function, e.g. ``my_rewards.length_bonus``.
    """

    def __init__(self, function: str) -> None:
        self.function = function
        self._fn: Callable | None = None

    @property
    def name(self) -> str:
        return self.function.rpartition(".")[2]

    def setup(self, device: torch.device) -> None:
        field = "model.init_args.reward.init_args.function"
        fn = import_object(self.function, field)
        if not callable(fn):
            raise RecipeError(field, f"'{self.function}' is not callable")
        if not takes_prompts_and_responses(fn):
            raise RecipeError(field, f"'{self.function}' takes {inspect.signature(fn)}, but a reward function is "
                                     "called as fn(prompts, responses, **columns)",
                              "give it the parameters (prompts, responses), then any data columns it needs")
        self._fn = fn

    def missing_columns(self, available: Sequence[str]) -> list[str]:
        if self._fn is None:
            self.setup(torch.device("cpu"))
        return [name for name in required_columns(self._fn) if name not in available]

    def score(self, prompts: Sequence[Any], responses: Sequence[str], **columns: Sequence[Any]) -> torch.Tensor:
        if self._fn is None:
            self.setup(torch.device("cpu"))
        try:
            values = self._fn(list(prompts), list(responses), **accepted_columns(self._fn, columns))
        except Exception as error:  # the user's code: one message naming it and where it raised
            raise RewardFailed(self.function, error) from None
        return reward_values(values, len(responses), self.function)


def takes_prompts_and_responses(fn: Callable) -> bool:
    """Whether ``fn`` can be called with two positional arguments (``prompts``, ``responses``)."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return True  # a builtin or C function: cannot tell, let the call decide
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return True
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unfillable = [p for p in positional[2:] if p.kind is p.POSITIONAL_ONLY and p.default is p.empty]
    return len(positional) >= 2 and not unfillable  # later parameters are filled by name from data columns


def value_kinds(values: Any) -> str:
    """``"str"``, ``"NoneType, float"``: the types of what a user's code returned, for messages."""
    if isinstance(values, (list, tuple)):
        return ", ".join(sorted({type(v).__name__ for v in values})) or "no"
    return type(values).__name__


def as_float_tensor(values: Any) -> Optional[torch.Tensor]:
    """``values`` as a float32 tensor (its own shape, its own device), or None when they are not numbers."""
    try:
        return torch.as_tensor(values, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        return None


def shape_text(tensor: torch.Tensor) -> str:
    return "[" + ", ".join(str(size) for size in tensor.shape) + "]"


def reward_values(values: Any, count: int, function: str) -> torch.Tensor:
    """A reward function's output as ``[count]`` floats: a flat list (tuple, ...) or a 1-D tensor/array of one
    number per response. One clear error for another length, a nested list or a tensor of another shape, a
    single number, or non-numbers; NaN and ±inf are numbers, left to the finiteness guard
    (:mod:`~rlhf_lightning.guards`)."""
    field = "model.init_args.reward.init_args.function"
    tensor = as_float_tensor(values)
    if tensor is None:
        raise RecipeError(field, f"'{function}' must return one number per response, got {value_kinds(values)} values",
                          "return a list of floats, one per response")
    fix = f"return a flat list (or a 1-D tensor or array) of {count} floats, one per response, in their order"
    if tensor.dim() == 0:
        raise RecipeError(field, f"'{function}' returned 1 rewards for {count} responses (a single "
                                 f"{type(values).__name__}, not a list of them)", fix)
    if tensor.dim() > 1:
        raise RecipeError(field, f"'{function}' returned {tensor.numel()} rewards for {count} responses, nested as "
                                 f"shape {shape_text(tensor)} instead of [{count}]", fix)
    if tensor.shape[0] != count:
        raise RecipeError(field, f"'{function}' returned {tensor.shape[0]} rewards for {count} responses",
                          "return one float per response, in the order of the responses")
    return tensor


def checked_scores(values: Any, count: int, source: Any, method: str, unit: str = "response",
                   fix: Optional[str] = None) -> torch.Tensor:
    """A source's values as ``[count]`` float32 (on their device): shape ``[count]``, or ``[count, 1]`` (a column
    of logits); anything else (another number of values, ``[2, 2]`` for 4 responses, non-numbers) is a
    :class:`RecipeError` naming the source's class. ``unit``: what one value is for (``response``, ``pair``)."""
    name = type(source).__name__
    tensor = values.detach().float() if isinstance(values, torch.Tensor) else as_float_tensor(values)
    fix = fix or f"make {name}.{method} return one float per {unit}: a tensor of shape [N], in the order of the {unit}s"
    if tensor is None:
        raise RecipeError("model.init_args.reward", f"{name}.{method} must return one number per {unit}, got "
                                                    f"{value_kinds(values)} values", fix)
    squeezable = tensor.dim() <= 1 or all(size == 1 for size in tensor.shape[1:])
    if tensor.numel() != count or not squeezable:
        got = f"shape {shape_text(tensor)}" if tensor.dim() != 1 else f"{tensor.numel()} values"
        raise RecipeError("model.init_args.reward", f"{name}.{method} returned {got} for {count} {unit}s "
                                                    f"(expected shape [{count}])", fix)
    return tensor.reshape(count)


@dataclass
class RewardTerm:
    """One weighted source of a reward sum.

    Args:
        source: the reward source.
        weight: its weight ``w`` in ``r = Σ w·r_source``.
        name: how its part is logged (``reward/<name>``); default the source's name.
    """

    source: RewardSource
    weight: float = 1.0
    name: Optional[str] = None


class WeightedRewards(RewardSource):
    """The weighted sum of several reward sources, ``r(x, y) = Σ_k w_k · r_k(x, y)``.

    Each part ``r_k`` (unweighted) is logged as ``reward/<name>`` and the sum is the raw reward.

    Args:
        terms: the sources with their weights and names.
    """

    field = "model.init_args.reward"

    def __init__(self, terms: Sequence[RewardTerm]) -> None:
        errors = []
        if not terms:
            errors.append(RecipeError(self.field, "the list of reward sources is empty", "give at least one source"))
        names: list[str] = []
        for index, term in enumerate(terms):
            if isinstance(term.weight, bool) or not isinstance(term.weight, (int, float)) or not math.isfinite(term.weight):
                errors.append(RecipeError(f"{self.field}[{index}].weight", f"must be a finite number, got {term.weight!r}"))
            name = term.name or term.source.name
            if name in RESERVED_PART_NAMES:
                errors.append(RecipeError(f"{self.field}[{index}].name", f"'{name}' is the name of another reward "
                                          f"metric (reward/{name})", "give the source another name"))
            names.append(name if name not in names else f"{name}_{index}")
        raise_all(errors)
        self.terms = list(terms)
        self.names = names

    @property
    def name(self) -> str:
        return "+".join(self.names)

    def setup(self, device: torch.device) -> None:
        for term in self.terms:
            term.source.setup(device)

    def missing_columns(self, available: Sequence[str]) -> list[str]:
        return [name for term in self.terms for name in term.source.missing_columns(available)]

    def _combine(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return sum(term.weight * part for term, part in zip(self.terms, parts))

    def score(self, prompts: Sequence[Any], responses: Sequence[str], **columns: Sequence[Any]) -> torch.Tensor:
        return self._combine([checked_scores(term.source.score(prompts, responses,
                                                               **accepted_columns(term.source.score, columns)),
                                             len(responses), term.source, "score") for term in self.terms])

    def score_terms(self, prompts: Sequence[Any], responses: Sequence[str], group_size: int,
                    **columns: Sequence[Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = [term.source.score_terms(prompts, responses, group_size, **columns)[0] for term in self.terms]
        return self._combine(parts), dict(zip(self.names, parts))

    def score_groups(self, prompts: Sequence[Any], responses: Sequence[str], group_size: int,
                     **columns: Sequence[Any]) -> torch.Tensor:
        return self.score_terms(prompts, responses, group_size, **columns)[0]


def check_columns(source: RewardSource, available: Sequence[str], field: str, rows: str) -> None:
    """A :class:`RecipeError` naming ``field`` when ``source`` asks for a data column that ``rows`` (e.g.
    "the training prompts") do not have, whose names are ``available``."""
    missing = source.missing_columns(available)
    if missing:
        raise RecipeError(field, f"the reward asks for the data column '{missing[0]}', which {rows} do not have "
                                 f"(columns: {', '.join(available) or 'none'})",
                          f"add a '{missing[0]}' column to {rows}, or give the parameter a default")


def is_pointwise(source: RewardSource) -> bool:
    """Whether ``source`` scores single responses (no preference source in it), as an evaluation judge must."""
    if isinstance(source, PreferenceSource):
        return False
    return all(is_pointwise(term.source) for term in getattr(source, "terms", []))


def as_reward_source(reward: Union[RewardSource, Sequence[RewardTerm], None]) -> Optional[RewardSource]:
    """The module's reward: one source as it is, a list of weighted terms as their :class:`WeightedRewards`."""
    if reward is None or isinstance(reward, RewardSource):
        return reward
    return WeightedRewards(list(reward))


class _OneLogitClassifier:
    """A lazily loaded Hugging Face sequence-classification model with one output, scoring texts in batches."""

    truncation_side = "right"

    def __init__(self, path: str, batch_size: int, max_length: int, trust_remote_code: bool,
                 revision: Optional[str] = None) -> None:
        self.path, self.trust_remote_code, self.revision = path, trust_remote_code, revision
        self.batch_size, self.max_length = batch_size, max_length
        self._model = None
        self._tokenizer = None

    field = "model.init_args.reward.init_args"
    kind = "reward model"

    def setup(self, device: torch.device) -> None:
        """Load the tokenizer and the model after the checks that need no weights (``config.json``: one output, a
        classifier and not a causal LM; the tokenizer fits the embeddings); NaN/inf weights are an error."""
        from transformers import AutoModelForSequenceClassification

        from rlhf_lightning.model_checks import reward_model_problem
        from rlhf_lightning.models import (ModelConfig, load_model_config, load_pretrained, load_tokenizer,
                                           tokenizer_problems)

        config = ModelConfig(path=self.path, revision=self.revision, trust_remote_code=self.trust_remote_code)
        field = f"{self.field}.path"
        model_config = load_model_config(config, self.field)
        raise_all([problem] if (problem := reward_model_problem(model_config, self.path, field, self.kind)) else [])
        self._tokenizer = load_tokenizer(self.path, field, trust_remote_code=self.trust_remote_code,
                                         padding_side="right", revision=self.revision)
        self._tokenizer.truncation_side = self.truncation_side
        raise_all(tokenizer_problems(self._tokenizer, model_config, field))  # its tokenizer fits its embeddings
        model = load_pretrained(AutoModelForSequenceClassification, config, self.field,
                                "a sequence-classification model")
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self._tokenizer.pad_token_id
        self._model = model.to(device).eval().requires_grad_(False)

    @contextmanager
    def _chat_prompts_need_a_template(self):
        """Chat-message prompts are rendered with this model's tokenizer: without a chat template, or with one
        that fails on them (bad Jinja, the template's own exception), one clear error."""
        from rlhf_lightning.model_checks import chat_template_error, is_template_error

        try:
            yield
        except Exception as error:
            if not (is_template_error(error) or isinstance(error, ValueError) and "chat template" in str(error)):
                raise
            if getattr(self._tokenizer, "chat_template", None):
                raise chat_template_error(error, self._tokenizer, f"{self.field}.path", "the prompts") from None
            raise RecipeError(f"{self.field}.path", f"the prompts are chat messages, but the "
                              f"tokenizer of '{self.path}' has no chat template to render them",
                              "use a reward model whose tokenizer has a chat template, or plain-text prompts") from None

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
        path: local model directory (``save_pretrained`` output) or hub id (through the Hugging Face cache).
        revision: hub revision (branch, tag or commit) of a hub id; ``null`` = the default branch.
        batch_size: pairs scored per forward pass.
        max_length: truncation length for prompt + response, in the reward model's tokens.
        trust_remote_code: allow custom modelling code shipped with the model (off by default).
    """

    def __init__(self, path: str, batch_size: int = 32, max_length: int = 1024,
                 trust_remote_code: bool = False, revision: Optional[str] = None) -> None:
        super().__init__(path, batch_size, max_length, trust_remote_code, revision)

    @torch.no_grad()
    def score(self, prompts: Sequence[Any], responses: Sequence[str], **columns: Sequence[Any]) -> torch.Tensor:
        """Encoded exactly as reward-model training encodes pairs (prompt tokens, response tokens, EOS;
        see :mod:`rlhf_lightning.data.encoding`), scored at the last real token."""
        from rlhf_lightning.critic import sequence_scores
        from rlhf_lightning.data.encoding import encode_prompt, encode_response, pad_rows

        if self._model is None:
            self.setup(torch.device("cpu"))
        device = next(self._model.parameters()).device
        with self._chat_prompts_need_a_template():
            rows = [(encode_prompt(self._tokenizer, p) + encode_response(self._tokenizer, r, p))[-self.max_length:]
                    for p, r in zip(prompts, responses)]
        out = [torch.zeros(0)]
        for start in range(0, len(rows), self.batch_size):
            ids, mask = pad_rows(rows[start:start + self.batch_size], self._tokenizer.pad_token_id, "right")
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
                   responses_b: Sequence[str], **columns: Sequence[Any]) -> torch.Tensor:
        """``P(a ≻ b | x)`` for each triple, shape ``[N]``, values in ``[0, 1]``; ``columns`` are the prompt
        data's other columns, one value per triple (a source takes those it names)."""

    def missing_columns(self, available: Sequence[str]) -> list[str]:
        return [name for name in required_columns(self.preference, skip=3) if name not in available]

    def _needs_groups(self, asked: str) -> RecipeError:
        return RecipeError(
            "model.init_args.reward",
            f"{type(self).__name__} is a preference reward: it scores each response against the other responses "
            f"to the same prompt, so it needs ≥ 2 samples per prompt; it was asked to score {asked}",
            "use an objective with ≥ 2 samples per prompt (e.g. REBEL, OnlineDPO), and give evaluation callbacks a "
            "pointwise judge (trainer.callbacks[WinRateEvaluation].init_args.judge, e.g. the task's GoldJudge)")

    def score(self, prompts: Sequence[Any], responses: Sequence[str], **columns: Sequence[Any]) -> torch.Tensor:
        raise self._needs_groups("single responses (pointwise, as an evaluation judge does)")

    def score_groups(self, prompts: Sequence[Any], responses: Sequence[str], group_size: int,
                     **columns: Sequence[Any]) -> torch.Tensor:
        if group_size < 2:
            raise self._needs_groups(f"groups of {group_size} response per prompt")
        n = len(responses)
        if len(prompts) != n or n % group_size:
            raise ValueError(f"got {len(prompts)} prompts and {n} responses for groups of {group_size}")
        first, second = torch.triu_indices(group_size, group_size, offset=1)  # [M] pairs i < j of a group
        starts = torch.arange(0, n, group_size)  # [B]
        rows_a = (starts[:, None] + first[None, :]).reshape(-1)  # [B·M]
        rows_b = (starts[:, None] + second[None, :]).reshape(-1)
        a, b = rows_a.tolist(), rows_b.tolist()
        pair_columns = {name: [values[i] for i in a] for name, values in columns.items()}
        p = self.preference([prompts[i] for i in a], [responses[i] for i in a], [responses[i] for i in b],
                            **accepted_columns(self.preference, pair_columns, skip=3))
        p = preference_values(p, rows_a.shape[0], self)
        wins = torch.zeros(n).index_add_(0, rows_a, p).index_add_(0, rows_b, 1.0 - p)  # [N]
        return wins / (group_size - 1)


def preference_values(values: Any, count: int, source: "PreferenceSource") -> torch.Tensor:
    """A preference source's ``P(a ≻ b)`` as ``[count]`` float32 on the CPU, checked as :func:`checked_scores`
    checks scores."""
    fix = (f"make {type(source).__name__}.preference return one probability per (prompt, a, b) triple: a tensor of "
           "shape [N]")
    return checked_scores(values, count, source, "preference", unit="pair", fix=fix).cpu()


class PreferenceFailed(RewardFailed):
    """The user's preference function raised: stopped as :class:`~rlhf_lightning.guards.RewardFailed` stops a
    reward function that raised (exit code 3), worded for a preference."""

    def __init__(self, source: str, error: BaseException) -> None:
        super().__init__(source, error)
        text = str(self).replace("the reward function", "the preference function", 1)
        self.args = (text.replace("return one number per response", "return one probability in [0, 1] per pair", 1),)


def symmetrised(p_ab: torch.Tensor, p_ba: torch.Tensor) -> torch.Tensor:
    """``½·(P(a ≻ b) + 1 − P(b ≻ a))``: removes a judge's position bias, so the result plus its swap is 1."""
    return 0.5 * (p_ab + 1.0 - p_ba)


class FunctionPreference(PreferenceSource):
    """Preferences from a Python function ``fn(prompts, responses_a, responses_b, **columns) -> list[float]``
    giving ``P(a ≻ b | x)`` per triple (e.g. a rule or a call to an LLM judge); further parameters it names
    get those columns of the prompt data, one value per triple.

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

    def missing_columns(self, available: Sequence[str]) -> list[str]:
        if self._fn is None:
            self.setup(torch.device("cpu"))
        return [name for name in required_columns(self._fn, skip=3) if name not in available]

    def _call(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str], columns: Columns) -> torch.Tensor:
        try:
            values = self._fn(list(prompts), list(a), list(b), **accepted_columns(self._fn, columns, skip=3))
        except Exception as error:  # the user's code: one message naming it and where it raised
            raise PreferenceFailed(self.function, error) from None
        return probability_values(values, len(a), self.function)

    def preference(self, prompts: Sequence[str], responses_a: Sequence[str],
                   responses_b: Sequence[str], **columns: Sequence[Any]) -> torch.Tensor:
        if self._fn is None:
            self.setup(torch.device("cpu"))
        p_ab = self._call(prompts, responses_a, responses_b, columns)
        if not self.symmetrise:
            return p_ab
        return symmetrised(p_ab, self._call(prompts, responses_b, responses_a, columns))


def probability_values(values: Any, count: int, function: str) -> torch.Tensor:
    """A preference function's output as ``[count]`` probabilities: a flat list (or a 1-D tensor/array) of numbers
    in [0, 1], one per triple; anything else is a :class:`RecipeError` naming the function."""
    field = "model.init_args.reward.init_args.function"
    tensor = as_float_tensor(values)
    fix = f"return a flat list (or a 1-D tensor or array) of {count} probabilities P(a ≻ b) in [0, 1], one per pair"
    if tensor is None:
        raise RecipeError(field, f"preference function '{function}' must return one probability per pair, got "
                                 f"{value_kinds(values)} values", fix)
    if tensor.dim() != 1:
        what = f"a single {type(values).__name__}" if tensor.dim() == 0 else f"shape {shape_text(tensor)}"
        raise RecipeError(field, f"preference function '{function}' returned {what} for {count} pairs, not a flat "
                                 f"list of {count} probabilities", fix)
    if tensor.shape[0] != count:
        raise RecipeError(field, f"preference function '{function}' returned {tensor.shape[0]} probabilities for "
                                 f"{count} pairs", fix)
    outside = ~((tensor >= 0) & (tensor <= 1))  # NaN is outside too
    if bool(outside.any()):
        first = int(outside.nonzero()[0, 0])
        raise RecipeError(field, f"preference function '{function}' must return probabilities in [0, 1]; "
                                 f"{int(outside.sum())} of {count} are not (the first, pair {first}, is "
                                 f"{tensor[first].item()})", fix)
    return tensor


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
        path: local model directory (``save_pretrained`` output) or hub id (through the Hugging Face cache).
        revision: hub revision (branch, tag or commit) of a hub id; ``null`` = the default branch.
        batch_size: texts scored per forward pass.
        max_length: truncation length of the text above, in the model's tokens.
        trust_remote_code: allow custom modelling code shipped with the model (off by default).
    """

    separator = "\n\nversus\n\n"
    truncation_side = "left"
    kind = "preference model"

    def __init__(self, path: str, batch_size: int = 32, max_length: int = 1024,
                 trust_remote_code: bool = False, revision: Optional[str] = None) -> None:
        super().__init__(path, batch_size, max_length, trust_remote_code, revision)

    def format(self, prompt: str, response_a: str, response_b: str) -> str:
        """The text the model scores for the ordered pair ``(a, b)``."""
        return prompt + response_a + self.separator + response_b

    def preference(self, prompts: Sequence[str], responses_a: Sequence[str],
                   responses_b: Sequence[str]) -> torch.Tensor:
        from rlhf_lightning.data.encoding import prompt_text

        if self._model is None:
            self.setup(torch.device("cpu"))
        with self._chat_prompts_need_a_template():
            prompts = [prompt_text(self._tokenizer, x) for x in prompts]
        forward = [self.format(x, a, b) for x, a, b in zip(prompts, responses_a, responses_b)]
        backward = [self.format(x, b, a) for x, a, b in zip(prompts, responses_a, responses_b)]
        logits = self._logits(forward + backward)  # [2N]
        p_ab, p_ba = torch.sigmoid(logits).split(len(forward))
        return symmetrised(p_ab, p_ba)
