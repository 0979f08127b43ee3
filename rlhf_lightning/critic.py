"""The critic of actor-critic objectives (PPO): a value model giving ``V`` at every response token."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rlhf_lightning.errors import RecipeError, raise_all
from rlhf_lightning.response_forward import position_ids_from_mask
from rlhf_lightning.model_checks import HEAD_NAMES, lora_problems, value_model_problem
from rlhf_lightning.models import ModelConfig, _torch_dtype, add_lora, load_model_config, load_pretrained


def load_value_model(config: ModelConfig, field: str) -> nn.Module:
    """A sequence-classification model with one output, used per token as a value function.

    Pointing ``config.path`` at a reward model directory initialises the critic from the reward
    model (its scalar head included), as in the REBEL paper's PPO set-up; pointing it at a causal-LM
    directory gives the same body with a freshly initialised value head. Other missing weights, a
    classifier of several outputs and NaN/inf weights are errors.
    """
    from transformers import AutoModelForSequenceClassification

    if config.lora is not None:
        raise_all(lora_problems(config.lora, field))
    model_config = load_model_config(config, field)
    raise_all([problem] if (problem := value_model_problem(model_config, config.path, f"{field}.path")) else [])
    model = load_pretrained(AutoModelForSequenceClassification, config, field, "a value model",
                            allowed_missing=HEAD_NAMES, num_labels=1, dtype=_torch_dtype(config.dtype))
    if value_head(model) is None:
        raise RecipeError(f"{field}.path", f"'{type(model).__name__}' has no 'score' or 'classifier' head",
                          "use a model family with a sequence-classification head (Llama, GPT-NeoX, GPT-2, ...)")
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.lora is not None:
        model = add_lora(model, config.lora, field, "SEQ_CLS")  # the value head stays fully trainable (modules_to_save)
    return model


def value_head(model: nn.Module) -> nn.Module | None:
    """The scalar head of a sequence-classification model (``score`` or ``classifier``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in ("score", "classifier"):
        head = getattr(base, name, None)
        if isinstance(head, nn.Module):
            return head
    return None


def value_model_parts(model: nn.Module) -> list[nn.Module]:
    """The backbone and the scalar head, which :func:`token_values` and :func:`sequence_scores` call one by one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return [getattr(base, base.base_model_prefix), value_head(model)]


def token_values(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, prompt_length: int) -> Tensor:
    """``V(x, y_<i)`` for each response token ``i``, ``[N, R]``, zero on padding.

    The value of token ``i`` is read at the position that predicts it (the last prompt token for
    ``i = 0``), the same positions :func:`rlhf_lightning.logprobs.response_logprobs` uses.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, base.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=position_ids_from_mask(attention_mask), use_cache=False).last_hidden_state
    response_width = input_ids.shape[1] - prompt_length
    hidden = hidden[:, prompt_length - 1:prompt_length - 1 + response_width]  # [N, R, H]
    values = value_head(model)(hidden).squeeze(-1).float()  # [N, R]
    return values * attention_mask[:, prompt_length:].float()


def sequence_scores(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, prompt_length: int) -> Tensor:
    """A reward model's score of each prompt + response row, ``[N]``: the scalar head at the last real
    token (the EOS of a right-padded response), as ``AutoModelForSequenceClassification`` pools."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, base.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=position_ids_from_mask(attention_mask), use_cache=False).last_hidden_state
    last = attention_mask.shape[1] - 1 - attention_mask.flip(-1).long().argmax(-1)  # [N] last real position
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [N, H]
    return value_head(model)(pooled).squeeze(-1).float()
