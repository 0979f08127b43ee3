"""Checks of model and tokenizer inputs, each ending in one :class:`RecipeError` that names the recipe field.

They look at what a model directory or hub id holds before anything heavy loads (the files, ``config.json``,
the heads the config declares), translate what ``from_pretrained`` raises (a refused pickle, custom code, a
hub id missing from the cache) and check what it loaded (weights that were missing or of another shape, NaN
or infinite values, LoRA target modules). :mod:`rlhf_lightning.models` calls them while it loads.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from torch import nn

from rlhf_lightning.errors import RecipeError

TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json")
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
CLASSIFIER_SUFFIXES = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")
HEAD_NAMES = ("score", "classifier")  # the scalar head of a sequence-classification model
SAVE_FIX = "point it to a directory written by save_pretrained()"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")  # name or org/name
HUB_FIX = ("if it is a hub id, check its spelling (and revision); offline (HF_HUB_OFFLINE=1) it must be in the "
           "Hugging Face cache already (huggingface-cli download NAME)")


def is_hub_id(path: str) -> bool:
    """``name`` or ``org/name`` that is not a local path: resolved by ``from_pretrained`` (cache, revision,
    ``HF_HUB_OFFLINE``)."""
    return not Path(path).exists() and bool(_HUB_ID.match(path)) and not path.startswith(".")


def first_line(error: BaseException) -> str:
    """The gist of a (often many-line) error; its type too when that is not an OSError or ValueError (a
    ``KeyError: 'added_tokens'`` says little without it)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[0] if isinstance(error, (OSError, ValueError)) else f"{type(error).__name__}: {lines[0]}"


def trust_option(field: str) -> Optional[str]:
    """The recipe's ``trust_remote_code`` key next to ``field`` (``….path`` → ``….trust_remote_code``)."""
    return field[:-len(".path")] + ".trust_remote_code" if field.endswith(".path") else None


# ------------------------------------------------------------------------------------------ files
def json_file_problem(file: Path, field: str) -> Optional[RecipeError]:
    """A JSON file of a model or tokenizer directory that does not parse."""
    try:
        json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        return RecipeError(field, f"'{file}' is not valid JSON ({error.msg} at line {error.lineno}, column "
                                  f"{error.colno})", f"restore {file.name} (save_pretrained() writes it) or download "
                                                     "the model again")
    except UnicodeDecodeError:
        return RecipeError(field, f"'{file}' is not a text (JSON) file",
                           f"restore {file.name} or download the model again")
    return None


def adapter_problem(directory: Path, field: str) -> Optional[RecipeError]:
    """A LoRA adapter directory (``adapter_config.json``) given where a whole model goes."""
    adapter = directory / "adapter_config.json"
    if not adapter.is_file() or (directory / "config.json").exists():
        return None
    try:
        base = json.loads(adapter.read_text()).get("base_model_name_or_path")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        base = None
    of_base = f" for the base model '{base}'" if base else ""
    return RecipeError(field, f"'{directory}' is a LoRA adapter{of_base} (adapter_config.json), not a whole model",
                       "merge it into its base model (ExportPolicy with merge_lora: true writes a merged directory, "
                       "or peft's merge_and_unload() then save_pretrained()) and point the path there")


def weight_files(directory: Path) -> list[Path]:
    """The model weight files of a ``save_pretrained`` directory (single or sharded; an adapter's do not count)."""
    patterns = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model*.bin.index.json")
    return sorted({p for pattern in patterns for p in directory.glob(pattern) if not p.name.startswith("adapter_")})


def model_directory_problem(directory: Path, field: str) -> Optional[RecipeError]:
    """What is wrong with a local model directory, before anything loads: an adapter only, no or a broken
    ``config.json``, no weight files."""
    problem = adapter_problem(directory, field)
    if problem is not None:
        return problem
    config = directory / "config.json"
    if not config.exists():
        return RecipeError(field, f"directory '{directory}' has no config.json, so it is not a saved model", SAVE_FIX)
    problem = json_file_problem(config, field)
    if problem is not None:
        return problem
    if not weight_files(directory):
        return RecipeError(field, f"directory '{directory}' has a config.json but no weights (no model.safetensors, "
                                  "pytorch_model.bin or sharded *.index.json)",
                           "copy the weight files next to config.json, or save the model again with save_pretrained()")
    return None


def tokenizer_files_problem(directory: Path, field: str) -> Optional[RecipeError]:
    """A tokenizer directory's JSON files must parse (a corrupt ``tokenizer.json`` gives an unhelpful error)."""
    for name in TOKENIZER_JSON_FILES:
        if (directory / name).is_file():
            problem = json_file_problem(directory / name, field)
            if problem is not None:
                return problem
    return None


def tokenizer_json_problem(directory: Path, field: str) -> Optional[RecipeError]:
    """A ``tokenizer.json`` that parses as JSON but not as a tokenizer (another tool's layout, a damaged file);
    asked only once loading the tokenizer has failed."""
    file = directory / "tokenizer.json"
    if not file.is_file():
        return None
    try:
        from tokenizers import Tokenizer

        Tokenizer.from_file(str(file))
    except Exception as error:  # the Rust parser raises a plain Exception
        return RecipeError(field, f"'{file}' is not a tokenizer the tokenizers library reads ({first_line(error)})",
                           "restore tokenizer.json (tokenizer.save_pretrained() writes it) or download the model again")
    return None


# ------------------------------------------------------------------------------------------ config.json
def remote_code_problem(directory: Path, field: str) -> Optional[RecipeError]:
    """A checkpoint of an architecture transformers does not know, which ships its own code (``auto_map``):
    refused unless the recipe trusts it."""
    from transformers import CONFIG_MAPPING

    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    auto_map, model_type = config.get("auto_map"), config.get("model_type")
    if not auto_map or model_type in CONFIG_MAPPING:
        return None  # transformers' own implementation of the architecture is used, the shipped code is not run
    code = next(iter(auto_map.values())) if isinstance(auto_map, dict) and auto_map else str(auto_map)
    return remote_code_refusal(field, f"'{directory}' (model type '{model_type}') ships its own modelling code "
                                      f"({code}, auto_map in config.json)")


def remote_code_refusal(field: str, what: str) -> RecipeError:
    """Custom code is not run unless the recipe says so; the fix names the option, and nothing else."""
    option = trust_option(field)
    fix = (f"read that code; if you trust it, set {option}: true" if option
           else "use a model or tokenizer that loads without custom code")
    return RecipeError(field, f"{what}, which is not run unless the recipe trusts it", fix)


def text_config(model_config):
    """The text part of a (possibly multimodal) config."""
    return model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config


def embedding_rows(model_config) -> Optional[int]:
    """The model's vocabulary size (embedding rows), if its config says."""
    rows = getattr(text_config(model_config), "vocab_size", None)
    return rows if isinstance(rows, int) and rows > 0 else None


def config_problems(model_config, path: str, field: str) -> list[RecipeError]:
    """``config.json`` values that break loading or training: a ``pad_token_id`` outside the embeddings."""
    rows, pad = embedding_rows(model_config), getattr(text_config(model_config), "pad_token_id", None)
    if rows is not None and isinstance(pad, int) and not -rows <= pad < rows:
        return [RecipeError(field, f"config.json of '{path}' sets pad_token_id {pad}, outside the model's {rows} "
                                   "embedding rows", "set pad_token_id in config.json to the tokenizer's pad token id, "
                                                     "or to null")]
    return []


def architectures(model_config) -> list[str]:
    return [str(name) for name in (getattr(model_config, "architectures", None) or [])]


def _is(names: Sequence[str], suffixes: tuple[str, ...]) -> bool:
    return any(name.endswith(suffixes) for name in names)


def causal_lm_problem(model_config, path: str, field: str) -> Optional[RecipeError]:
    """A classifier (reward model) checkpoint given where a causal LM goes."""
    names = architectures(model_config)
    if not names or _is(names, CAUSAL_LM_SUFFIXES) or not _is(names, CLASSIFIER_SUFFIXES):
        return None
    return RecipeError(field, f"'{path}' is a {names[0]} checkpoint (a reward or classification model), not a "
                              "causal language model",
                       "point it at a causal LM (…ForCausalLM); a reward model goes in model.init_args.reward "
                       "(rlhf_lightning.rewards.RewardModel)")


def reward_model_problem(model_config, path: str, field: str, kind: str = "reward model") -> Optional[RecipeError]:
    """A reward (or preference, ``kind``) model is a sequence classifier with one output: a causal LM has no
    trained score head (its rewards would be random), a classifier of several labels gives several numbers."""
    names, labels = architectures(model_config), getattr(model_config, "num_labels", None)
    if names and _is(names, CAUSAL_LM_SUFFIXES) and not _is(names, CLASSIFIER_SUFFIXES):
        return RecipeError(field, f"'{path}' is a causal language model ({names[0]}), not a {kind}: it has no "
                                  "trained score head, so its rewards would be random",
                           f"train a {kind} first (objective rlhf_lightning.objectives.BradleyTerry) "
                           "and point the path at it")
    if isinstance(labels, int) and labels != 1:
        return RecipeError(field, f"'{path}' has {labels} outputs (num_labels {labels}); a {kind} has one output",
                           f"use a {kind} saved with num_labels=1 (a classifier of several labels is not one)")
    return None


def value_model_problem(model_config, path: str, field: str) -> Optional[RecipeError]:
    """A critic starts from a reward model (one output) or a causal LM (new head), not a classifier of several."""
    names, labels = architectures(model_config), getattr(model_config, "num_labels", None)
    if _is(names, CLASSIFIER_SUFFIXES) and isinstance(labels, int) and labels != 1:
        return RecipeError(field, f"'{path}' is a classifier with {labels} outputs (num_labels {labels}); a critic "
                                  "has one", "start the critic from a reward model (num_labels=1) or a causal LM")
    return None


# ------------------------------------------------------------------------------------------ from_pretrained errors
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def load_error(error: BaseException, path: str, field: str, what: str, revision: Optional[str] = None,
               fix: str = SAVE_FIX) -> RecipeError:
    """One message for what ``from_pretrained`` raised while loading ``what`` (e.g. "a causal LM")."""
    if isinstance(error, pickle.UnpicklingError):
        return pickle_refusal(error, path, field)
    if "custom code" in str(error) or "trust_remote_code" in str(error):
        return remote_code_refusal(field, f"'{path}' needs custom code to load")
    if is_hub_id(path):
        return hub_problem(path, revision, field, what, error)
    return RecipeError(field, f"cannot load {what} from '{path}': {first_line(error)}", fix)


def pickle_refusal(error: BaseException, path: str, field: str) -> RecipeError:
    """A pickled checkpoint that would run code when loaded: refused (weights load in safe mode only)."""
    called = _GLOBAL.search(str(error))
    does = f" (it would call {called.group(1)})" if called else ""
    return RecipeError(field, f"the weights of '{path}' are a pickle that holds code, not only tensors{does}, so they "
                              "were not loaded", "use weights saved as model.safetensors from a source you trust")


def _cached_revisions(repo_id: str) -> Optional[list[str]]:
    """The revisions of ``repo_id`` in the Hugging Face cache (branch/tag names and commits), None if none."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    if not repo.is_dir():
        return None
    refs = [p.name for p in (repo / "refs").glob("*") if p.is_file()] if (repo / "refs").is_dir() else []
    return sorted(refs) or sorted(p.name for p in (repo / "snapshots").glob("*"))


def hub_problem(repo_id: str, revision: Optional[str], field: str, what: str, error: BaseException) -> RecipeError:
    """A hub id that did not load: not in the cache offline, a revision the cache lacks, or the hub's answer."""
    from huggingface_hub import constants

    offline = bool(constants.HF_HUB_OFFLINE)
    cached = _cached_revisions(repo_id)
    if offline and cached is None:
        return RecipeError(field, f"hub id '{repo_id}' is not in the Hugging Face cache ({constants.HF_HUB_CACHE}), "
                                  "and HF_HUB_OFFLINE=1 forbids downloading it",
                           f"download it while online (huggingface-cli download {repo_id}), or check the spelling")
    if cached is not None and revision is not None and revision not in cached and offline:
        return RecipeError(field, f"revision '{revision}' of '{repo_id}' is not in the Hugging Face cache (cached: "
                                  f"{', '.join(cached) or 'none'}), and HF_HUB_OFFLINE=1 forbids downloading it",
                           f"use a cached revision, or download it while online (huggingface-cli download {repo_id} "
                           f"--revision {revision})")
    return RecipeError(field, f"cannot load {what} from the hub id '{repo_id}'"
                              f"{f' at revision {revision!r}' if revision else ''}: {first_line(error)}", HUB_FIX)


# ------------------------------------------------------------------------------------------ what loaded
def loading_problems(info: Mapping[str, Any], path: str, field: str,
                     allowed_missing: Sequence[str] = ()) -> list[RecipeError]:
    """Weights the checkpoint lacks (they would start random) or holds in another shape than its config
    says (``from_pretrained(..., output_loading_info=True, ignore_mismatched_sizes=True)``)."""
    mismatched = list(info.get("mismatched_keys") or [])
    if mismatched:
        key, in_file, in_model = mismatched[0]
        return [RecipeError(field, f"the weights of '{path}' do not fit its config.json: {key} is "
                                   f"{list(in_file)} in the checkpoint but {list(in_model)} for the config "
                                   f"({len(mismatched)} tensors differ)",
                            "use the config.json saved with these weights (save_pretrained() writes both)")]
    missing = sorted(key for key in info.get("missing_keys") or []
                     if not any(part in allowed_missing for part in key.split(".")))
    if missing:
        return [RecipeError(field, f"'{path}' lacks {len(missing)} of the model's weights ({', '.join(missing[:3])}"
                                   f"{', ...' if len(missing) > 3 else ''}): they would start random",
                            "use a complete checkpoint of this architecture (save_pretrained() of the whole model)")]
    return []


def nonfinite_problems(model: nn.Module, path: str, field: str) -> list[RecipeError]:
    """NaN or infinite values in the loaded weights (a damaged checkpoint, or one saved after a run diverged):
    every output would be NaN. One pass over the floating-point parameters."""
    import torch

    bad: dict[str, int] = {}
    for name, tensor in model.named_parameters():
        if not tensor.is_floating_point() or tensor.is_meta:
            continue
        if not bool(torch.isfinite(tensor).all()):
            bad[name] = int((~torch.isfinite(tensor)).sum())
    if not bad:
        return []
    names = list(bad)
    return [RecipeError(field, f"the weights of '{path}' hold {sum(bad.values())} NaN or infinite values in "
                               f"{len(bad)} tensor{'s' if len(bad) > 1 else ''} ({', '.join(names[:2])}"
                               f"{', ...' if len(names) > 2 else ''})",
                        "the checkpoint is damaged or was saved after a run diverged: use an earlier checkpoint "
                        "or the original model")]


# ------------------------------------------------------------------------------------------ LoRA
def lora_problems(lora, field: str) -> list[RecipeError]:
    """LoRA settings peft would reject with a traceback (or accept and do nothing with)."""
    errors = []
    r, alpha, dropout, targets = lora.r, lora.alpha, lora.dropout, lora.target_modules
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        errors.append(RecipeError(f"{field}.lora.r", f"the adapter rank must be a positive integer, got {r!r}",
                                  "use a rank such as 8 or 16"))
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        errors.append(RecipeError(f"{field}.lora.alpha", f"must be a positive number, got {alpha!r}",
                                  "use e.g. twice the rank (alpha / r scales the update)"))
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        errors.append(RecipeError(f"{field}.lora.dropout", f"must be in [0, 1), got {dropout!r}",
                                  "use 0.0 or e.g. 0.05"))
    if not targets:
        errors.append(RecipeError(f"{field}.lora.target_modules", "is empty",
                                  "name the modules to adapt, or all-linear"))
    return errors


def linear_module_names(model: nn.Module) -> list[str]:
    """The last name part of every linear layer (``q_proj``, ``dense``, ...), as LoRA target names."""
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if name and (isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D")}
    return sorted(names)


def lora_target_problems(model: nn.Module, targets: Union[str, Iterable[str]], field: str) -> list[RecipeError]:
    """Each listed LoRA target must name a module of the model (peft matches names by their end); a name that
    matches nothing would silently not be adapted (or fail in peft when none match)."""
    if isinstance(targets, str):
        if targets == "all-linear" or any(re.fullmatch(targets, name) for name, _ in model.named_modules()):
            return []
        missing = [targets]
    else:
        names = [name for name, _ in model.named_modules() if name]
        missing = [t for t in targets if not any(name == t or name.endswith(f".{t}") for name in names)]
    if not missing:
        return []
    available = linear_module_names(model)
    verb = "is not a module" if len(missing) == 1 else "are not modules"
    return [RecipeError(f"{field}.lora.target_modules", f"{', '.join(repr(t) for t in missing)} {verb} of the model",
                        f"use some of its linear layers ({', '.join(available[:12])}) or all-linear")]


# ------------------------------------------------------------------------------------------ chat templates
def chat_template_error(error: BaseException, tokenizer, field: str, where: str = "") -> RecipeError:
    """A chat template that fails to render the prompts (bad Jinja, or a ``raise_exception`` of the template):
    one message naming the tokenizer. ``where`` says which prompt (e.g. "row 3 of 'train.jsonl'")."""
    source = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
    at = f" on {where}" if where else ""
    return RecipeError(field, f"the chat template of '{source}' fails{at}: {first_line(error)}",
                       "fix the template (chat_template.jinja, or chat_template in tokenizer_config.json), use a "
                       "tokenizer whose template fits these messages, or plain-text prompts")


def is_template_error(error: BaseException) -> bool:
    """Whether ``error`` was raised by a Jinja chat template (a syntax error or the template's own exception)."""
    try:
        from jinja2 import TemplateError
    except ImportError:
        return False
    return isinstance(error, TemplateError)
