"""Load the policy, reference and reward models from Hugging Face directories; export the result."""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Union

import torch
from torch import nn

from rlhf_lightning.errors import RecipeError

DType = Literal["float32", "bfloat16", "float16"]


@dataclass
class LoraSettings:
    """LoRA adapter settings (peft). The reference is the same weights with the adapter disabled.

    Args:
        r: adapter rank.
        alpha: scaling numerator (``alpha / r`` multiplies the update).
        dropout: dropout on the adapter input.
        target_modules: module names to adapt, or ``all-linear``.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: Union[str, list[str]] = "all-linear"


@dataclass
class ModelConfig:
    """Where a causal LM comes from and how it is trained.

    Args:
        path: a local directory written by ``save_pretrained``, or a hub id (``org/name``) that
            ``from_pretrained`` resolves through the Hugging Face cache (downloading it when online).
        revision: the hub revision (branch, tag or commit) of a hub id; ``null`` = the default branch.
        dtype: weight dtype when loading.
        lora: train a LoRA adapter instead of all weights (set to ``{}`` for defaults).
        load_in_4bit: QLoRA: load the base weights in 4-bit NF4 with bitsandbytes (needs a GPU and ``lora``).
        trust_remote_code: run modelling code shipped with the model; off unless you trust it.
        gradient_checkpointing: recompute activations in the backward pass to save memory.
        tokenizer: tokenizer directory when it is not stored with the model.
    """

    path: str
    revision: Optional[str] = None
    dtype: DType = "float32"
    lora: Optional[LoraSettings] = None
    load_in_4bit: bool = False
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    tokenizer: Optional[str] = None


def _is_cached_hub_id(name: str, filename: str = "config.json") -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, filename), str)
    except Exception:
        return False


def _first_line(error: Exception) -> str:
    """The gist of a (often many-line) transformers error."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "config.json")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")  # name or org/name
HUB_FIX = ("if it is a hub id, check its spelling (and revision); offline (HF_HUB_OFFLINE=1) it must be in the "
           "Hugging Face cache already (huggingface-cli download NAME)")


def is_hub_id(path: str) -> bool:
    """``name`` or ``org/name`` that is not a local path: resolved by ``from_pretrained`` (cache, revision,
    ``HF_HUB_OFFLINE``)."""
    return not Path(path).exists() and bool(_HUB_ID.match(path)) and not path.startswith(".")


def check_model_path(path: str, field: str) -> None:
    """A clear error when ``path`` is neither a model directory nor something that can be a hub id
    (``org/name``, resolved later by ``from_pretrained``)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise RecipeError(field, f"'{path}' is a file, not a model directory",
                          "point it to a directory written by save_pretrained()")
    if p.is_dir():
        if not (p / "config.json").exists():
            raise RecipeError(field, f"directory '{path}' has no config.json, so it is not a saved model",
                              "point it to a directory written by save_pretrained()")
        return
    if is_hub_id(path) or _is_cached_hub_id(path):
        return
    raise RecipeError(field, f"model path '{path}' does not exist",
                      "give a local directory written by save_pretrained() or a hub id such as "
                      "EleutherAI/pythia-410m (downloaded into the Hugging Face cache when online)")


def load_tokenizer(path: str, field: str, trust_remote_code: bool = False,
                   padding_side: str = "left", revision: Optional[str] = None):
    """Load a tokenizer (a directory or a hub id); a missing pad token is set to EOS with a warning."""
    from transformers import AutoTokenizer

    p = Path(path)
    if p.is_dir():
        if not any((p / name).exists() for name in _TOKENIZER_FILES):
            raise RecipeError(field, f"directory '{path}' holds no tokenizer or model (no {', '.join(_TOKENIZER_FILES)})",
                              "point it to a directory written by save_pretrained() (model and tokenizer)")
    elif p.exists():
        raise RecipeError(field, f"'{path}' is a file, not a model or tokenizer directory",
                          "point it to a directory written by save_pretrained()")
    elif not is_hub_id(path) and not any(_is_cached_hub_id(path, name) for name in _TOKENIZER_FILES[:2]):
        raise RecipeError(field, f"path '{path}' does not exist",
                          "give a local directory written by save_pretrained() or a hub id such as "
                          "EleutherAI/pythia-410m (downloaded into the Hugging Face cache when online)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError) as error:
        fix = HUB_FIX if is_hub_id(path) else "save the tokenizer with the model or set the tokenizer path"
        raise RecipeError(field, f"cannot load a tokenizer from '{path}': {_first_line(error)}", fix) from None
    if tokenizer.eos_token_id is None:
        raise RecipeError(field, f"the tokenizer at '{path}' has no EOS token",
                          "set eos_token in its tokenizer_config.json; responses end at EOS")
    if tokenizer.pad_token_id is None:
        warnings.warn(f"tokenizer at '{path}' has no pad token; using EOS ('{tokenizer.eos_token}') as pad",
                      stacklevel=2)
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_model_config(config: "ModelConfig", field: str):
    """The checkpoint's ``config.json`` only (no weights): for checks before anything heavy loads."""
    from transformers import AutoConfig

    check_model_path(config.path, f"{field}.path")
    try:
        return AutoConfig.from_pretrained(config.path, trust_remote_code=config.trust_remote_code,
                                          revision=config.revision)
    except (OSError, ValueError) as error:
        fix = HUB_FIX if is_hub_id(config.path) else "check that the directory holds a saved model"
        raise RecipeError(f"{field}.path", f"cannot read the model config of '{config.path}': {_first_line(error)}",
                          fix) from None


def context_length(model_config) -> Optional[int]:
    """The most positions the model takes (``max_position_embeddings``, ``n_positions``, ...), if it says."""
    text_config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(text_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def tokenizer_problems(tokenizer, model_config, field: str) -> list[RecipeError]:
    """A tokenizer with more tokens than the model has embedding rows is an error (an IndexError later);
    one with far fewer (under 90 %) is almost surely another model's tokenizer (a warning)."""
    text_config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    rows, tokens = getattr(text_config, "vocab_size", None), len(tokenizer)
    if not isinstance(rows, int):
        return []
    if tokens > rows:
        return [RecipeError(field, f"the tokenizer has {tokens} tokens but the model only {rows} embedding rows",
                            "use the model's own tokenizer (or resize the model's embeddings before training)")]
    if tokens < 0.9 * rows:
        warnings.warn(f"{field}: the tokenizer has {tokens} tokens for a model with {rows} embedding rows; is it the "
                      "model's own tokenizer?", stacklevel=2)
    return []


def same_tokenizer(a, b) -> bool:
    """Whether two tokenizers encode alike: the same vocabulary and the same EOS."""
    return a.get_vocab() == b.get_vocab() and a.eos_token_id == b.eos_token_id


def _torch_dtype(name: DType) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _unreadable_weights() -> tuple[type[BaseException], ...]:
    try:
        from safetensors import SafetensorError
    except ImportError:
        return ()
    return (SafetensorError,)


UNREADABLE_WEIGHTS = _unreadable_weights()  # a truncated or corrupt model.safetensors


def load_causal_lm(config: ModelConfig, field: str) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained`` with the recipe's dtype, 4-bit and LoRA options."""
    from transformers import AutoModelForCausalLM

    check_model_path(config.path, f"{field}.path")
    kwargs: dict = dict(trust_remote_code=config.trust_remote_code, dtype=_torch_dtype(config.dtype),
                        revision=config.revision)
    if config.load_in_4bit:
        if config.lora is None:
            raise RecipeError(f"{field}.load_in_4bit", "4-bit weights cannot be trained directly",
                              f"also set {field}.lora (QLoRA)")
        if not torch.cuda.is_available():
            raise RecipeError(f"{field}.load_in_4bit", "4-bit loading (bitsandbytes) needs a CUDA GPU",
                              "run on a GPU machine or set load_in_4bit: false")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    try:
        model = AutoModelForCausalLM.from_pretrained(config.path, **kwargs)
    except (OSError, ValueError, *UNREADABLE_WEIGHTS) as error:
        fix = HUB_FIX if is_hub_id(config.path) else "check that the directory holds a causal language model"
        raise RecipeError(f"{field}.path", f"cannot load a causal LM from '{config.path}': {_first_line(error)}",
                          fix) from None
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.lora is not None:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if config.load_in_4bit:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
        lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                          target_modules=config.lora.target_modules, task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    return model


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability to 0, so log-probs at rollout and update time agree."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


def save_hf_directory(model: nn.Module, tokenizer, directory: str | os.PathLike, merge_lora: bool = True) -> Path:
    """Write ``model`` and its tokenizer as a safetensors HF directory.

    A LoRA model is written merged (``merge_lora``: a plain model directory, the adapter merged into the
    weights in place and unmerged after saving, so no second copy of the model is made) or as the adapter
    alone, whose ``base_model_name_or_path`` is made absolute (or kept as a hub id) so that ``peft`` loads it
    from any working directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not hasattr(model, "peft_config"):
        model.save_pretrained(directory, safe_serialization=True)
    elif merge_lora:
        _save_merged(model, directory)
    else:
        absolute_adapter_base(model)
        model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def absolute_adapter_base(model: nn.Module) -> None:
    """Record a LoRA model's local base model as an absolute path (a hub id stays as it is), so that the
    saved adapter loads from any working directory."""
    for config in model.peft_config.values():
        base = config.base_model_name_or_path
        if base and Path(base).exists():
            config.base_model_name_or_path = str(Path(base).resolve())


def _save_merged(model: nn.Module, directory: Path) -> None:
    """The base model with the adapter merged, saved under the base model's own parameter names."""
    model.merge_adapter()
    try:
        base = model.get_base_model()
        base.save_pretrained(directory, state_dict=merged_base_state(base.state_dict()), safe_serialization=True)
    finally:
        model.unmerge_adapter()


def merged_base_state(state: dict) -> dict:
    """A LoRA model's state dict (adapter already merged into the base weights) under the base model's own
    names: adapter tensors dropped, ``….base_layer.weight`` → ``….weight``, peft's ``base_model.model.`` prefix
    removed."""
    return {key.removeprefix("base_model.model.").replace(".base_layer.", "."): value
            for key, value in state.items() if "lora_" not in key}
