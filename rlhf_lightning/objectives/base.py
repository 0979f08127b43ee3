"""The ``Objective`` interface: tensors in, ``(loss, metrics)`` out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Callable, Literal, Sequence

from torch import Tensor, nn

from rlhf_lightning.errors import RecipeError
from rlhf_lightning.rollout import Rollout

if TYPE_CHECKING:
    from rlhf_lightning.batches import GroupedRows


class Objective(nn.Module, ABC):
    """A training loss. Subclass it, implement :meth:`loss`, and name the class in a recipe.

    ``RLHFModule`` reads the class attributes to decide what to compute: a rollout per batch of
    prompts with ``samples_per_prompt`` samples each, reference log-probs, a critic. It then runs
    ``inner_epochs`` passes over the rollout in ``num_minibatches`` minibatches of whole prompts,
    one optimizer step per minibatch, calling :meth:`loss` with the policy's fresh log-probs.
    Running statistics an objective keeps belong in buffers, so that checkpoints carry them.

    Args:
        inner_epochs: passes over each rollout batch, with ``π_t`` held fixed.
        num_minibatches: optimizer steps per pass; the prompts of a rollout are split evenly.
    """

    samples_per_prompt: int = 1
    needs_rollout: bool = True  # False: an offline objective, trained on SequenceBatch batches of a data set
    policy_head: Literal["causal_lm", "scalar"] = "causal_lm"  # scalar: a reward model, loss() gets ``scores``
    needs_reference: bool = True
    needs_critic: bool = False  # the module passes ``values`` [N, R] (with grad) to loss()
    needs_entropy: bool = False  # the module passes ``entropy`` [N, R] (with grad) to loss()
    # True when prepare() keeps only some of the rollout's rows (REBEL's best/worst pairs): the module then
    # computes ln π_t in a no-grad pass over all rows rather than in the update's forward (which only needs the kept ones)
    selects_rollout_rows: bool = False
    kl_in_reward: bool = True  # False (GRPO): the rollout does not shape rewards with γ (the KL is in the loss)
    summary_metrics: dict[str, str] = {}  # validation metric → summary.json key, e.g. {"rm/accuracy": "rm_accuracy"}

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
        errors += list(problems)
        if errors:
            from rlhf_lightning.errors import raise_all

            raise_all(errors)
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
                ``needs_critic`` / ``needs_entropy``.

        Returns:
            The scalar loss and a dict of detached scalar metrics (names like ``loss/rebel``).
        """
