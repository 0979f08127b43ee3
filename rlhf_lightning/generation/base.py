"""The generation-engine interface: sample responses for left-padded prompts, exactly from the policy.

Rollouts and evaluation both generate through one :class:`Generator` (picked in the recipe as
``rollout.init_args.generator``; :class:`~rlhf_lightning.generation.huggingface.HFGenerator`, Hugging
Face ``generate``, is the default). An engine:

1. samples each token from ``softmax(logits / T)`` restricted only by the recipe's top-k / top-p
   (:class:`SamplingParams`): with top-k 0 and top-p 1 (the rollout's defaults) the log-probs the policy
   recomputes describe the sampler exactly; a cut makes the samples slightly off-policy;
2. draws ``num_samples`` responses per prompt (an engine may share the prompt's prefill among them) and
   stops a row at the first token of the EOS set (:func:`~rlhf_lightning.generation.eos.eos_token_ids`)
   and returns a :class:`Generation`: the response block, its mask and which rows ended;
3. is told after each rollout batch's optimizer steps (:meth:`Generator.sync_weights`) that the policy changed.

**Plugging in a vLLM- or SGLang-style engine** is one more file: subclass :class:`Generator`, start the
engine in :meth:`~Generator.setup` (it gets the tokenizer, the policy and the EOS set), turn the
prompt ids into engine requests in :meth:`~Generator.generate` with the same sampling parameters
(``temperature``, ``top_p``, ``top_k``, ``max_tokens``, ``n`` = ``num_samples`` and ``stop_token_ids`` =
the EOS set, every other processor off), and build the :class:`Generation` with :func:`~rlhf_lightning.generation.masks.
response_attention_mask`; in :meth:`~Generator.sync_weights` load the policy's current weights into the
engine (``policy.state_dict()``, LoRA merged, or an adapter update), since the engine keeps its own copy.
Generation with ``use_reference`` (evaluation's start-policy responses) needs the reference weights:
a second engine, or the adapter disabled. The engine's own log-probs are never used for training: the
module always recomputes ``ln π_t`` with the policy (a kernel or precision difference in the engine
would otherwise make the update silently off-policy); :attr:`Generation.sampler_logprobs` may carry them
for a check.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional

from torch import Tensor, nn

from rlhf_lightning.errors import RecipeError


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one batch of responses.

    Args:
        max_new_tokens: response length limit.
        temperature: ``T`` of ``softmax(logits / T)``; 0 decodes greedily.
        top_p: nucleus threshold (1.0 = off).
        top_k: top-k cut (0 = off).
        min_new_tokens: forbid EOS for this many tokens (changes the sampling distribution: keep 0 for
            exact on-policy log-probs).
        num_samples: responses per prompt (``n``); they come back as consecutive rows, prompt by prompt.
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_new_tokens: int = 0
    num_samples: int = 1

    def problems(self, field: str) -> list[RecipeError]:
        """One :class:`RecipeError` per bad value, each naming ``<field>.<key>``."""
        checks = [("max_new_tokens", self.max_new_tokens >= 1, "must be ≥ 1"),
                  ("temperature", self.temperature >= 0, "must be ≥ 0 (0 = greedy)"),
                  ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
                  ("top_k", self.top_k >= 0, "must be ≥ 0 (0 = off)"),
                  ("min_new_tokens", 0 <= self.min_new_tokens <= self.max_new_tokens,
                   "must be in [0, max_new_tokens]"),
                  ("num_samples", self.num_samples >= 1, "must be ≥ 1")]
        return [RecipeError(f"{field}.{key}", f"{rule}, got {getattr(self, key)}") for key, ok, rule in checks
                if not ok]

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Generation:
    """What an engine returns for ``B`` prompts and ``k = num_samples``: ``N = B·k`` rows, the ``k`` samples of
    each prompt consecutive.

    Attributes:
        responses: ``[N, R]`` response tokens, the pad token after the end of each response.
        response_mask: ``[N, R]`` 1 on real response tokens (up to and including the first EOS).
        ended: ``[N]`` whether each response ended with a token of the EOS set (not by the length limit).
        sampler_logprobs: ``[N, R]`` the engine's own ``ln p`` of each sampled token (0 on padding), when
            it was asked to record them: for fidelity checks only, never for training.
    """

    responses: Tensor
    response_mask: Tensor
    ended: Tensor
    sampler_logprobs: Optional[Tensor] = None


class Generator(ABC):
    """A generation engine (see the module docstring for the contract and how to add one)."""

    eos_ids: tuple[int, ...] = ()
    pad_token_id: int = 0

    def setup(self, tokenizer, policy: nn.Module) -> None:
        """Called once the policy is loaded: resolve the EOS set, start an external engine, ..."""
        from rlhf_lightning.generation.eos import eos_token_ids

        self.eos_ids = eos_token_ids(tokenizer, policy)
        self.pad_token_id = tokenizer.pad_token_id

    @abstractmethod
    def generate(self, model: nn.Module, input_ids: Tensor, attention_mask: Tensor, params: SamplingParams,
                 use_reference: bool = False) -> Generation:
        """Sample ``params.num_samples`` responses per row of the left-padded prompts ``input_ids`` ``[B, P]``
        from ``model``, returned as ``B·k`` rows (the samples of a prompt consecutive).

        ``use_reference``: sample from the frozen reference (evaluation's start-policy responses); ``model`` is
        then the reference (under LoRA: the policy with its adapter disabled). An engine with its own copy of
        the weights must sample from the reference weights, not from the policy's."""

    def sync_weights(self, policy: nn.Module) -> None:
        """The policy's weights changed (after a rollout batch's optimizer steps, before the next generation);
        an engine with its own copy reloads them."""
