"""The ``Objective`` interface: tensors in, ``(loss, metrics)`` out."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal, Sequence

from torch import Tensor, nn

from rlhf_lightning.errors import RecipeError, raise_all
from rlhf_lightning.rollout import Rollout

if TYPE_CHECKING:
    from rlhf_lightning.batches import GroupedRows

# the per-flag class attributes that Needs replaced: a subclass that still sets one would be ignored silently
_OLD_FLAGS = {"samples_per_prompt": "samples_per_prompt", "needs_rollout": "rollout", "policy_head": "head",
              "needs_reference": "reference", "needs_critic": "critic", "needs_entropy": "entropy",
              "selects_rollout_rows": "selects_rows", "kl_in_reward": "kl_in_reward",
              "dataset_responses_per_prompt": "dataset_responses_per_prompt"}


@dataclass(frozen=True)
class Needs:
    """What an objective needs ``RLHFModule`` and the rollout to compute, declared in one place.

    Declare it as a class attribute (``needs = Needs(samples_per_prompt=2)``); an objective whose needs
    depend on its arguments sets ``self.needs = dataclasses.replace(self.needs, ...)`` in ``__init__``.

    Args:
        rollout: an online objective, trained on a rollout per batch of prompts (False: on the data
            module's :class:`~rlhf_lightning.batches.SequenceBatch` batches).
        samples_per_prompt: samples of ``π_t`` the rollout draws per prompt.
        dataset_responses_per_prompt: data-set responses appended to each prompt's group (hybrid pairs).
        reference: ``ln π_ref`` per token (rollout ``ref_logprobs``; offline ``batch.ref_logprobs``).
        critic: a value model; ``loss`` gets ``values`` ``[N, R]`` with grad.
        entropy: ``loss`` gets the policy's per-token ``entropy`` ``[N, R]`` with grad.
        head: ``causal_lm``, or ``scalar`` for a reward model (``loss`` gets ``scores`` ``[N]``).
        selects_rows: ``prepare`` keeps only some of the rollout's rows, so ``ln π_t`` comes from a no-grad
            pass over all rows rather than from the update's forward.
        kl_in_reward: the rollout's γ shapes the reward ``r̃``; False (the KL is in the loss, GRPO): γ must be 0.
        pretrain_coef: weight of a pretraining LM loss on text the data module attaches (PPO-ptx); > 0
            needs ``data.init_args.pretrain_file``.
    """

    rollout: bool = True
    samples_per_prompt: int = 1
    dataset_responses_per_prompt: int = 0
    reference: bool = True
    critic: bool = False
    entropy: bool = False
    head: Literal["causal_lm", "scalar"] = "causal_lm"
    selects_rows: bool = False
    kl_in_reward: bool = True
    pretrain_coef: float = 0.0

    @property
    def group_size(self) -> int:
        """Rows per prompt in a rollout: samples, then data-set responses."""
        return self.samples_per_prompt + self.dataset_responses_per_prompt


def number_problems(key: str, value: float, ok: Callable[[float], bool], wanted: str,
                    fix: str = "") -> list[RecipeError]:
    """``[]`` if ``value`` is a finite number with ``ok(value)``, else one error naming
    ``model.init_args.objective.init_args.<key>`` (collect them all, then :func:`raise_all`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        return [Objective.field_error(key, f"must be {wanted}, got {value!r}", fix)]
    return []


def flag_problems(**flags: bool) -> list[RecipeError]:
    """One error per argument that is not ``true``/``false``."""
    return [Objective.field_error(key, f"must be true or false, got {value!r}") for key, value in flags.items()
            if not isinstance(value, bool)]


class Objective(nn.Module, ABC):
    """A training loss. Subclass it, implement :meth:`loss`, and name the class in a recipe.

    ``RLHFModule`` reads :attr:`needs` (a :class:`Needs`) to decide what to compute: a rollout per batch
    of prompts with ``samples_per_prompt`` samples each, reference log-probs, a critic. It then runs
    ``inner_epochs`` passes over the rollout in ``num_minibatches`` minibatches of whole prompts,
    one optimizer step per minibatch, calling :meth:`loss` with the policy's fresh log-probs.
    Running statistics an objective keeps belong in buffers, so that checkpoints carry them.

    Args:
        inner_epochs: passes over each rollout batch, with ``π_t`` held fixed.
        num_minibatches: optimizer steps per pass; the prompts of a rollout are split evenly.
    """

    needs: Needs = Needs()
    summary_metrics: dict[str, str] = {}  # validation metric → summary.json key, e.g. {"rm/accuracy": "rm_accuracy"}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        old = [name for name in _OLD_FLAGS if name in vars(cls)]
        if old:
            declared = ", ".join(f"{_OLD_FLAGS[name]}={vars(cls)[name]!r}" for name in old)
            raise TypeError(f"{cls.__name__} sets {', '.join(old)} as class attributes, which the module no longer "
                            f"reads; declare them once instead: needs = Needs({declared}) "
                            "(from rlhf_lightning.objectives import Needs)")

    def __setattr__(self, name: str, value) -> None:
        if name in _OLD_FLAGS:  # set in __init__, as objectives used to: it would be ignored silently
            raise TypeError(f"{type(self).__name__} sets self.{name}, which the module no longer reads; write "
                            f"self.needs = dataclasses.replace(self.needs, {_OLD_FLAGS[name]}=...) instead")
        super().__setattr__(name, value)

    def __init__(self, inner_epochs: int = 1, num_minibatches: int = 1,
                 problems: Sequence[RecipeError] = ()) -> None:
        """``problems``: a subclass's own argument errors, reported together with these in one error."""
        super().__init__()
        errors = []
        if inner_epochs < 1:
            errors.append(self.field_error("inner_epochs", f"must be ≥ 1, got {inner_epochs}", "set it to 1 or more"))
        if num_minibatches < 1:
            errors.append(self.field_error("num_minibatches", f"must be ≥ 1, got {num_minibatches}",
                                           "set it to 1 or more"))
        raise_all(errors + list(problems))
        self.inner_epochs = inner_epochs
        self.num_minibatches = num_minibatches

    @property
    def name(self) -> str:
        return type(self).__name__.lower()

    @staticmethod
    def field_error(key: str, problem: str, fix: str = "") -> RecipeError:
        """A :class:`RecipeError` for ``model.init_args.objective.init_args.<key>``."""
        return RecipeError(f"model.init_args.objective.init_args.{key}", problem, fix)

    def chunk_weight(self, chunk: "GroupedRows", whole: "GroupedRows") -> float:
        """Weight of a micro-batch's loss when the module splits a minibatch to save memory.

        The weighted sum of the chunks' losses must equal the whole minibatch's loss: the row share
        (the default) is exact for means over rows or groups; a loss averaged over tokens, or over a
        data-dependent subset of pairs, overrides this (e.g. with the share of response tokens).
        """
        return len(chunk) / len(whole)

    def prepare(self, rollout: Rollout, reduce_sum: Callable[[Tensor], Tensor]) -> Rollout:
        """Once per rollout batch, before the inner epochs (no grad): compute advantages, pick pairs, ...

        Per-row results go in ``rollout.extras`` so that minibatches carry them. ``reduce_sum`` sums a
        tensor over all processes; use it for statistics that must be global (e.g. whitening).
        """
        return rollout

    @abstractmethod
    def loss(self, logprobs: Tensor, rollout: Rollout, **outputs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss for one minibatch.

        Args:
            logprobs: ``[N, R]`` per-token ``ln π_θ`` of the rollout's responses (0 on padding), with grad.
            rollout: the minibatch's rollout (old and reference log-probs, rewards, masks, extras).
            outputs: ``values`` and/or ``entropy`` (``[N, R]``, with grad) when the objective declares
                ``Needs(critic=True)`` / ``Needs(entropy=True)``.

        Returns:
            The scalar loss and a dict of detached scalar metrics (names like ``loss/rebel``).
        """
