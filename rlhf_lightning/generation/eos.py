"""The EOS set of a checkpoint: every token that ends a response.

A checkpoint may end a response with more than the tokenizer's one EOS: Llama-3 lists
``[<|end_of_text|>, <|eot_id|>]`` in ``generation_config.json``, ChatML models end a turn with
``<|im_end|>``, Gemma with ``<end_of_turn>``. Generation stops on any of them and each counts as
EOS for the no-EOS reward.
"""

from __future__ import annotations

from typing import Iterable, Optional, Union

from torch import nn

# end-of-turn markers of common chat templates (Llama-3, ChatML/Qwen, Gemma, Phi-3, Mistral/Llama-2)
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>", "<|eom_id|>", "</s>")


def _ids(value: Optional[Union[int, Iterable[int]]]) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def base_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model under a peft wrapper (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def end_of_turn_ids(tokenizer) -> list[int]:
    """Ids of the end-of-turn markers that the tokenizer's chat template writes after a message."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return []
    vocab = tokenizer.get_vocab()
    return [vocab[token] for token in END_OF_TURN_TOKENS if token in template and token in vocab]


def eos_token_ids(tokenizer, model: Optional[nn.Module] = None) -> tuple[int, ...]:
    """The tokenizer's EOS ∪ the generation config's ``eos_token_id`` (int or list) ∪ the chat template's
    end-of-turn token, in that order, without repeats."""
    ids = _ids(tokenizer.eos_token_id)
    config = getattr(base_model(model), "generation_config", None) if model is not None else None
    ids += _ids(getattr(config, "eos_token_id", None))
    ids += end_of_turn_ids(tokenizer)
    return tuple(dict.fromkeys(ids))
