"""Load the policy, reference and reward models from Hugging Face directories; export the result."""

from __future__ import annotations

import os
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from rlhf_lightning.errors import RecipeError, raise_all
from rlhf_lightning.quiet import first_report
from rlhf_lightning.model_checks import HUB_FIX, is_hub_id  # noqa: F401  (also imported from here)
from rlhf_lightning.model_checks import (adapter_problem, causal_lm_problem, config_problems, embedding_rows,
                                         first_line, load_error, loading_problems, lora_problems,
                                         lora_target_problems, model_directory_problem, nonfinite_problems,
                                         remote_code_problem, tokenizer_files_problem, tokenizer_json_problem)

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


_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "config.json")


def check_model_path(path: str, field: str) -> None:
    """A clear error when ``path`` is neither a complete model directory (``config.json`` that parses, weight
    files; not a LoRA adapter alone) nor something that can be a hub id (``org/name``, resolved later by
    ``from_pretrained``)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise RecipeError(field, f"'{path}' is a file, not a model directory",
                          "point it to a directory written by save_pretrained()")
    if p.is_dir():
        problem = model_directory_problem(p, field)
        if problem is not None:
            raise problem
        return
    if is_hub_id(path) or _is_cached_hub_id(path):
        return
    raise RecipeError(field, f"model path '{path}' does not exist",
                      "give a local directory written by save_pretrained() or a hub id such as "
                      "EleutherAI/pythia-410m (downloaded into the Hugging Face cache when online)")


def load_tokenizer(path: str, field: str, trust_remote_code: bool = False,
                   padding_side: str = "left", revision: Optional[str] = None, warn_no_pad: bool = True):
    """Load a tokenizer (a directory or a hub id); a missing pad token is set to EOS with a warning, given once
    per tokenizer in a run (a run loads the policy's tokenizer for the model and for the data);
    ``warn_no_pad=False`` for a load whose warnings are hidden anyway (then a later load still warns)."""
    from transformers import AutoTokenizer

    p = Path(path)
    if p.is_dir():
        if not any((p / name).exists() for name in _TOKENIZER_FILES):
            raise adapter_problem(p, field) or RecipeError(
                field, f"directory '{path}' holds no tokenizer or model (no {', '.join(_TOKENIZER_FILES)})",
                "point it to a directory written by save_pretrained() (model and tokenizer)")
        raise_all([problem] if (problem := tokenizer_files_problem(p, field)) else [])
    elif p.exists():
        raise RecipeError(field, f"'{path}' is a file, not a model or tokenizer directory",
                          "point it to a directory written by save_pretrained()")
    elif not is_hub_id(path) and not any(_is_cached_hub_id(path, name) for name in _TOKENIZER_FILES[:2]):
        raise RecipeError(field, f"path '{path}' does not exist",
                          "give a local directory written by save_pretrained() or a hub id such as "
                          "EleutherAI/pythia-410m (downloaded into the Hugging Face cache when online)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    except Exception as error:  # a malformed tokenizer file raises anything (KeyError, the Rust parser's Exception)
        fix = "save the tokenizer with the model or set the tokenizer path"
        raise (p.is_dir() and tokenizer_json_problem(p, field)) or load_error(
            error, path, field, "a tokenizer", revision, fix) from None
    if tokenizer.eos_token_id is None:
        raise RecipeError(field, f"the tokenizer at '{path}' has no EOS token",
                          "set eos_token in its tokenizer_config.json; responses end at EOS")
    if tokenizer.pad_token_id is None:
        if warn_no_pad and first_report(("no pad token", str(p.resolve()) if p.is_dir() else path, revision)):
            warnings.warn(f"tokenizer at '{path}' has no pad token; using EOS ('{tokenizer.eos_token}') as pad",
                          stacklevel=2)
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def load_model_config(config: "ModelConfig", field: str):
    """The checkpoint's ``config.json`` only (no weights): for checks before anything heavy loads. Custom code
    is refused unless ``trust_remote_code``; a ``pad_token_id`` outside the embeddings is an error."""
    from transformers import AutoConfig

    check_model_path(config.path, f"{field}.path")
    if Path(config.path).is_dir() and not config.trust_remote_code:
        raise_all([problem] if (problem := remote_code_problem(Path(config.path), f"{field}.path")) else [])
    try:
        model_config = AutoConfig.from_pretrained(config.path, trust_remote_code=config.trust_remote_code,
                                                  revision=config.revision)
    except (OSError, ValueError) as error:
        raise _config_error(error, config, f"{field}.path") from None
    raise_all(config_problems(model_config, config.path, f"{field}.path"))
    return model_config


def _config_error(error: Exception, config: "ModelConfig", field: str) -> RecipeError:
    """An unreadable ``config.json``: an architecture this transformers does not know is named as such."""
    unknown = re.search(r"model type `([^`]+)`", str(error))
    if unknown and "does not recognize" in str(error):
        import transformers

        return RecipeError(field, f"'{config.path}' is of model type '{unknown.group(1)}', which transformers "
                                  f"{transformers.__version__} does not know",
                           "check model_type in its config.json; if it is right, the model needs a newer transformers")
    return load_error(error, config.path, field, "the model config", config.revision,
                      "check that the directory holds a saved model")


def context_length(model_config) -> Optional[int]:
    """The most positions the model takes (``max_position_embeddings``, ``n_positions``, ...), if it says."""
    text_config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(text_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def tokenizer_problems(tokenizer, model_config, field: str) -> list[RecipeError]:
    """A tokenizer with more tokens than the model has embedding rows is an error (an IndexError later; the
    special tokens beyond the rows are named); one with far fewer (under 90 %) is almost surely another
    model's tokenizer (a warning)."""
    rows, tokens = embedding_rows(model_config), len(tokenizer)
    if rows is None:
        return []
    if tokens > rows:
        beyond = [f"{role} token '{getattr(tokenizer, f'{role}_token')}' is id {token_id}"
                  for role in ("pad", "eos", "bos") if (token_id := getattr(tokenizer, f"{role}_token_id", None))
                  is not None and token_id >= rows]
        named = f" (its {', '.join(beyond)})" if beyond else ""
        return [RecipeError(field, f"the tokenizer has {tokens} tokens but the model only {rows} embedding rows{named}",
                            "use the model's own tokenizer (or resize the model's embeddings before training)")]
    if tokens < 0.9 * rows:
        warnings.warn(f"{field}: the tokenizer has {tokens} tokens for a model with {rows} embedding rows; is it the "
                      "model's own tokenizer?", stacklevel=2)
    return []


def same_tokenizer(a, b) -> bool:
    """Whether two tokenizers encode alike: the same vocabulary and the same EOS."""
    return a.get_vocab() == b.get_vocab() and a.eos_token_id == b.eos_token_id


def companion_problems(tokenizer, policy_model_config, needs: Sequence[tuple[int, int, str]],
                       companions: Mapping[str, Optional["ModelConfig"]]) -> list[RecipeError]:
    """The reference and the critic read the policy's token ids: each one (``companions``: recipe field such as
    ``model.init_args.reference`` → its config, None when not used) must have the policy's vocabulary and
    room for the prompts and generated tokens in ``needs`` (``(prompt tokens, new tokens, field)``, as
    :meth:`RLHFModule.require_context` collects them). Reads ``config.json`` (and the tokenizer, when the
    directory has one) only, before any weights load."""
    errors: list[RecipeError] = []
    for field, config in companions.items():
        if config is None:
            continue
        model_config = load_model_config(config, field)
        errors += _vocabulary_problems(tokenizer, policy_model_config, model_config, config, field)
        limit = context_length(model_config)
        for prompt_tokens, new_tokens, need_field in needs:
            if limit is not None and prompt_tokens + new_tokens > limit:
                errors.append(RecipeError(f"{field}.path", f"'{config.path}' has {limit} positions, but prompts of up "
                                          f"to {prompt_tokens} tokens + {new_tokens} new tokens ({need_field}) need "
                                          f"{prompt_tokens + new_tokens}",
                                          f"use a model with at least {prompt_tokens + new_tokens} positions, or lower "
                                          f"{need_field} to {max(limit - prompt_tokens, 0)}"))
                break
    return errors


def _vocabulary_problems(tokenizer, policy_model_config, model_config, config: "ModelConfig",
                         field: str) -> list[RecipeError]:
    """Another model family's tokenizer (or too few embedding rows) next to the policy."""
    rows, policy_rows = embedding_rows(model_config), embedding_rows(policy_model_config)
    if rows is not None and rows < len(tokenizer):
        return [RecipeError(f"{field}.path", f"'{config.path}' has {rows} embedding rows, fewer than the policy "
                                             f"tokenizer's {len(tokenizer)} tokens: it is not of the policy's model "
                                             "family",
                            "use a model with the policy's tokenizer (e.g. the policy's own path)")]
    own = _own_tokenizer(config, field)
    if own is not None and not same_tokenizer(own, tokenizer):
        return [RecipeError(f"{field}.path", f"the tokenizer of '{config.path}' is not the policy's (another "
                                             "vocabulary or EOS): it would read the policy's token ids as other tokens",
                            "use a model with the policy's tokenizer (e.g. the policy's own path)")]
    if own is None and rows is not None and policy_rows is not None and rows != policy_rows:
        warnings.warn(f"{field}: '{config.path}' has {rows} embedding rows, the policy {policy_rows}; is it of the "
                      "policy's model family?", stacklevel=2)
    return []


def _own_tokenizer(config: "ModelConfig", field: str):
    """The tokenizer stored with a model, or None when it has none (or it does not load)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_tokenizer(config.tokenizer or config.path, f"{field}.path", config.trust_remote_code,
                                  revision=config.revision if config.tokenizer is None else None,
                                  warn_no_pad=False)
    except RecipeError:
        return None


def _torch_dtype(name: DType) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _unreadable_weights() -> tuple[type[BaseException], ...]:
    try:
        from safetensors import SafetensorError
    except ImportError:
        return ()
    return (SafetensorError,)


UNREADABLE_WEIGHTS = _unreadable_weights()  # a truncated or corrupt model.safetensors


def load_pretrained(auto_class, source: "ModelConfig", field: str, what: str, allowed_missing: Sequence[str] = (),
                    **kwargs) -> nn.Module:
    """``auto_class.from_pretrained`` of ``source.path`` with one clear error for whatever goes wrong: an
    unreadable or refused (pickled code) weights file, weights missing (outside ``allowed_missing`` module
    names) or of another shape than the config says, NaN or infinite values."""
    try:
        model, info = auto_class.from_pretrained(
            source.path, trust_remote_code=source.trust_remote_code, revision=source.revision,
            output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
    except (OSError, ValueError, pickle.UnpicklingError, *UNREADABLE_WEIGHTS) as error:
        raise load_error(error, source.path, f"{field}.path", what, source.revision,
                         f"check that the directory holds {what}") from None
    raise_all(loading_problems(info, source.path, f"{field}.path", allowed_missing))
    raise_all(nonfinite_problems(model, source.path, f"{field}.path"))
    return model


def _check_4bit(config: ModelConfig, field: str) -> dict:
    """The ``from_pretrained`` arguments of QLoRA, after checking it can run here."""
    if config.lora is None:
        raise RecipeError(f"{field}.load_in_4bit", "4-bit weights cannot be trained directly",
                          f"also set {field}.lora (QLoRA)")
    if not torch.cuda.is_available():
        raise RecipeError(f"{field}.load_in_4bit", "4-bit loading (bitsandbytes) needs a CUDA GPU",
                          "run on a GPU machine or set load_in_4bit: false")
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise RecipeError(f"{field}.load_in_4bit", "4-bit loading needs the bitsandbytes package, which is not "
                                                   "installed", "pip install bitsandbytes, or set load_in_4bit: false")
    from transformers import BitsAndBytesConfig

    return dict(quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16), device_map={"": torch.cuda.current_device()})


def add_lora(model: nn.Module, lora: LoraSettings, field: str, task_type: str) -> nn.Module:
    """``peft.get_peft_model`` with the recipe's settings; target modules the model lacks are one clear error."""
    from peft import LoraConfig, get_peft_model

    raise_all(lora_target_problems(model, lora.target_modules, field))
    settings = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=lora.target_modules, task_type=task_type)
    try:
        return get_peft_model(model, settings)
    except ValueError as error:  # peft's own checks (e.g. a module type it cannot adapt)
        raise RecipeError(f"{field}.lora", f"peft cannot add the adapter: {first_line(error)}",
                          "check target_modules (or use all-linear)") from None


def load_causal_lm(config: ModelConfig, field: str) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained`` with the recipe's dtype, 4-bit and LoRA options, after the
    checks that need no weights (LoRA settings, ``config.json``: custom code, a classifier checkpoint)."""
    from transformers import AutoModelForCausalLM

    if config.lora is not None:
        raise_all(lora_problems(config.lora, field))
    model_config = load_model_config(config, field)
    raise_all([problem] if (problem := causal_lm_problem(model_config, config.path, f"{field}.path")) else [])
    kwargs: dict = dict(dtype=_torch_dtype(config.dtype))
    if config.load_in_4bit:
        kwargs.update(_check_4bit(config, field))
    model = load_pretrained(AutoModelForCausalLM, config, field, "a causal LM", config=model_config, **kwargs)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.lora is not None:
        from peft import prepare_model_for_kbit_training

        if config.load_in_4bit:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
        model = add_lora(model, config.lora, field, "CAUSAL_LM")
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
