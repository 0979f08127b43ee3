"""``rlhf-lightning generate``: sample responses of a trained policy for a file of prompts, to JSONL.

    rlhf-lightning generate --policy_dir runs/quickstart/policy --prompts prompts.jsonl --output out.jsonl
    rlhf-lightning generate recipes/quickstart.yaml --ckpt_path last --prompts prompts.txt
    echo "Hello" | rlhf-lightning generate --policy_dir runs/quickstart/policy --temperature 0

The policy is an exported directory (``--policy_dir``) or a checkpoint of a recipe's run (``--ckpt_path``: a
path, or ``last``; the recipe says which model and adapter the checkpoint's weights belong to). Sampling follows
the recipe's rollout (``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``, its generation engine) unless a
flag says otherwise; without a recipe the flags' defaults apply. Prompts: a ``.jsonl``/``.json``/``.csv``/
``.parquet`` file with a prompt column (text, or a list of chat messages rendered by the tokenizer's chat
template), a ``.txt`` file or standard input with one prompt per line (a line holding a JSON object is read as a
row). Each output row holds the prompt's columns plus ``response``, ``sample`` (0 … num_samples−1),
``response_tokens`` and ``ended`` (the response ended with an EOS token rather than at ``max_new_tokens``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, TextIO

from rlhf_lightning.errors import RecipeError

USAGE = ("rlhf-lightning generate [RECIPE.yaml ...] (--policy_dir DIR | --ckpt_path CKPT) [--prompts FILE|-] "
         "[--output FILE] [options] [--section.key value ...]")
SAMPLING_FLAGS = ("max_new_tokens", "temperature", "top_p", "top_k")
RecipeClasses = Callable[[Sequence[str], Sequence[str]], Any]  # (recipe files, --key value overrides) → LightningCLI


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf-lightning generate", usage=USAGE, description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("recipes", nargs="*", help="recipe files (later ones override earlier ones)")
    parser.add_argument("--policy_dir", help="an exported policy directory (e.g. runs/quickstart/policy)")
    parser.add_argument("--ckpt_path", help="a checkpoint of the recipe's run, or 'last' (needs the recipe)")
    parser.add_argument("--prompts", default="-", help="prompt file, or - for standard input (default)")
    parser.add_argument("--prompt_column", default="prompt", help="column of the prompts in a data file")
    parser.add_argument("--output", default="-", help="JSONL file to write (default: standard output)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    parser.add_argument("--num_samples", type=int, default=1, help="responses per prompt")
    parser.add_argument("--max_new_tokens", type=int, help="response length limit (recipe's rollout, else 64)")
    parser.add_argument("--temperature", type=float, help="0 decodes greedily (recipe's rollout, else 1.0)")
    parser.add_argument("--top_p", type=float, help="nucleus threshold (recipe's rollout, else 1.0)")
    parser.add_argument("--top_k", type=int, help="top-k cut, 0 = off (recipe's rollout, else 0)")
    parser.add_argument("--batch_size", type=int, default=16, help="prompts per generation batch")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu, ... (default: cuda when available)")
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="with --policy_dir alone: run the model directory's own code")
    return parser


@dataclasses.dataclass
class LoadedPolicy:
    model: Any
    tokenizer: Any
    generator: Any
    sampling: Any  # SamplingParams


# ----------------------------------------------------------------------------- prompts
def read_prompts(source: str, column: str, stdin: TextIO) -> list[dict]:
    """Rows with the prompt under ``column``: a data file (read as the data modules read it), or lines of text."""
    from rlhf_lightning.data.files import read_records

    field = "--prompts"
    if source == "-" or Path(source).suffix.lower() == ".txt":
        if source != "-" and not Path(source).is_file():
            raise RecipeError(field, f"'{source}' does not exist", "give a prompt file, or - to read standard input")
        text = stdin.read() if source == "-" else Path(source).read_text()
        rows = [line_row(line, column) for line in text.splitlines() if line.strip()]
    else:
        rows = read_records(source, field)
    if not rows:
        raise RecipeError(field, f"no prompts in '{source}'", "give one prompt per line, or a data file with rows")
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or row.get(column) in (None, "", []):
            raise RecipeError("--prompt_column", f"row {index} of '{source}' has no '{column}' value",
                              f"name the prompt column with --prompt_column (the row's keys: "
                              f"{', '.join(map(str, row)) if isinstance(row, dict) else type(row).__name__})")
    return rows


def line_row(line: str, column: str) -> dict:
    """A line of text as a prompt row; a line holding a JSON object is that row."""
    stripped = line.strip()
    if stripped.startswith("{"):
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            return value
    return {column: line.rstrip("\n")}


# ----------------------------------------------------------------------------- the policy
def checkpoint_policy_state(path: Path) -> dict:
    """The policy's weights in a Lightning checkpoint file (``policy.*`` keys, the prefix removed)."""
    import torch

    if path.is_dir():
        raise RecipeError("--ckpt_path", f"'{path}' is a sharded checkpoint directory (FSDP/DeepSpeed)",
                          "generate from the exported policy instead (--policy_dir <run folder>/policy, written by "
                          "ExportPolicy), or export it from a training run of the recipe")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = {key[len("policy."):]: value for key, value in checkpoint.get("state_dict", {}).items()
             if key.startswith("policy.")}
    if not state:
        raise RecipeError("--ckpt_path", f"'{path}' holds no policy weights (no 'policy.*' keys)",
                          "give a checkpoint written by a run of this library")
    return state


def load_from_recipe(options: argparse.Namespace, overrides: Sequence[str], recipe_classes: RecipeClasses) -> LoadedPolicy:
    from rlhf_lightning.callbacks import Rollout
    from rlhf_lightning.evaluate import checkpoint_file, policy_directory
    from rlhf_lightning.generation import SamplingParams
    from rlhf_lightning.models import load_causal_lm

    cli = recipe_classes(options.recipes, [*overrides, "--trainer.logger", "false"])
    module = cli.model
    if module.objective.needs.head != "causal_lm":
        raise RecipeError("model.init_args.objective", f"{type(module.objective).__name__} trains a scalar "
                          "(reward or value) model, which generates nothing", "give a recipe of a policy")
    rollout = next((c for c in cli.trainer.callbacks if isinstance(c, Rollout)), None)
    if options.policy_dir:
        directory = policy_directory(options.policy_dir)
        config = dataclasses.replace(module.policy_config, path=str(directory), revision=None, lora=None,
                                     tokenizer=None)
        module.policy_config = config
    tokenizer = module._policy_tokenizer()
    model = load_causal_lm(module.policy_config, "model.init_args.policy")
    if options.ckpt_path:
        path = checkpoint_file(options.ckpt_path, Path(cli.trainer.default_root_dir))
        missing, unexpected = model.load_state_dict(checkpoint_policy_state(path), strict=False)
        trained = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
        if unexpected or trained & set(missing):
            raise RecipeError("--ckpt_path", f"the weights in '{path}' do not fit the recipe's policy ("
                              f"{len(unexpected)} unknown, {len(trained & set(missing))} trained ones missing)",
                              "give the recipe the checkpoint was trained with (same model and LoRA settings)")
    sampling = rollout.sampling if rollout is not None else SamplingParams(max_new_tokens=64)
    generator = rollout.generator if rollout is not None else None
    return LoadedPolicy(model, tokenizer, generator, sampling)


def load_directory(options: argparse.Namespace) -> LoadedPolicy:
    from rlhf_lightning.evaluate import policy_directory
    from rlhf_lightning.generation import SamplingParams
    from rlhf_lightning.models import ModelConfig, load_causal_lm, load_tokenizer

    directory = policy_directory(options.policy_dir)
    config = ModelConfig(path=str(directory), trust_remote_code=options.trust_remote_code)
    tokenizer = load_tokenizer(str(directory), "--policy_dir", options.trust_remote_code)
    return LoadedPolicy(load_causal_lm(config, "--policy_dir"), tokenizer, None, SamplingParams(max_new_tokens=64))


def sampling_of(options: argparse.Namespace, recipe_sampling) -> Any:
    """The recipe's (or default) sampling settings with the command line's flags on top."""
    from rlhf_lightning.errors import raise_all

    changes = {name: getattr(options, name) for name in SAMPLING_FLAGS if getattr(options, name) is not None}
    sampling = dataclasses.replace(recipe_sampling, num_samples=options.num_samples, **changes)
    raise_all([RecipeError("--" + problem.field.rsplit(".", 1)[-1], problem.problem)
               for problem in sampling.problems("generate")])
    return sampling


# ----------------------------------------------------------------------------- generation
def generate_rows(policy: LoadedPolicy, rows: list[dict], column: str, sampling, batch_size: int,
                  device) -> Iterator[dict]:
    """Output rows, prompt by prompt, ``num_samples`` each."""
    import torch

    from rlhf_lightning.data.encoding import encode_prompt, pad_rows
    from rlhf_lightning.generation import HFGenerator

    generator = policy.generator or HFGenerator()
    generator.setup(policy.tokenizer, policy.model)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        encoded = []
        for index, row in enumerate(chunk, start):
            try:
                encoded.append(encode_prompt(policy.tokenizer, row[column]))
            except ValueError as error:
                raise RecipeError("--prompts", f"prompt {index}: {error}",
                                  "give text prompts, or a policy whose tokenizer has a chat template") from None
        input_ids, attention_mask = pad_rows(encoded, policy.tokenizer.pad_token_id, "left")
        with torch.no_grad():
            generation = generator.generate(policy.model, input_ids.to(device), attention_mask.to(device), sampling)
        mask = generation.response_mask.bool().cpu()
        responses = generation.responses.cpu()
        for number, row in enumerate(chunk):
            for sample in range(sampling.num_samples):
                at = number * sampling.num_samples + sample
                tokens = responses[at][mask[at]].tolist()
                yield {**row, "response": policy.tokenizer.decode(tokens, skip_special_tokens=True),
                       "sample": sample, "response_tokens": len(tokens), "ended": bool(generation.ended[at])}


def write_rows(rows: Iterator[dict], output: str, overwrite: bool, total: int) -> int:
    """Write JSONL to standard output, or to ``output`` atomically (a ``.partial`` file renamed when complete)."""
    if output == "-":
        count = 0
        for row in rows:
            print(json.dumps(row, ensure_ascii=False), flush=True)
            count += 1
        return count
    target = Path(output)
    if target.exists() and not overwrite:
        raise RecipeError("--output", f"'{target}' exists", "give another file, or --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    count = 0
    try:
        with partial.open("w") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
                print(f"\rgenerated {count}/{total}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return count


def main(argv: Sequence[str], recipe_classes: Optional[RecipeClasses] = None, stdin: Optional[TextIO] = None) -> int:
    """``rlhf-lightning generate ...`` (``argv`` without the command name); returns the rows written.

    ``recipe_classes(recipes, overrides)`` parses recipes as ``run`` does and returns the LightningCLI with the
    classes instantiated (:func:`rlhf_lightning.cli.recipe_classes`; passed in by the CLI, which imports this
    module, so that the two do not import each other)."""
    import torch

    options, overrides = argument_parser().parse_known_args(list(argv))
    if bool(options.policy_dir) == bool(options.ckpt_path):
        raise RecipeError("--policy_dir", "generate takes one of --policy_dir (an exported policy) and --ckpt_path "
                          "(a checkpoint, with its recipe); " + ("both" if options.policy_dir else "neither") +
                          " given", "e.g. rlhf-lightning generate --policy_dir runs/quickstart/policy")
    if options.ckpt_path and not options.recipes:
        raise RecipeError("--ckpt_path", "a checkpoint needs the recipe it was trained with (model, adapter)",
                          "rlhf-lightning generate RECIPE.yaml --ckpt_path CKPT, or --policy_dir <run>/policy")
    if overrides and not options.recipes:
        raise RecipeError(overrides[0], "is not an option of generate without a recipe", f"usage: {USAGE}")
    if options.batch_size < 1:
        raise RecipeError("--batch_size", f"must be ≥ 1, got {options.batch_size}")
    rows = read_prompts(options.prompts, options.prompt_column, stdin or sys.stdin)
    if options.recipes and recipe_classes is None:
        raise ValueError("generate with a recipe needs recipe_classes (rlhf_lightning.cli.recipe_classes)")
    policy = load_from_recipe(options, overrides, recipe_classes) if options.recipes else load_directory(options)
    sampling = sampling_of(options, policy.sampling)
    device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    policy.model.to(device).eval()
    torch.manual_seed(options.seed)
    produced = generate_rows(policy, rows, options.prompt_column, sampling, options.batch_size, device)
    return write_rows(produced, options.output, options.overwrite, len(rows) * sampling.num_samples)
