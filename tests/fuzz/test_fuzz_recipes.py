"""Fuzz: recipes and command lines. Bad input ends in one clear message (the recipe key and the fix), exit
code 2, no traceback, and the finished run in the folder (``run_root``, given ``overwrite: true``) is left whole.

Every case runs ``rlhf_lightning.cli.main`` in-process on the tiny model; one runs the installed
``rlhf-lightning`` console script. Recipe-file cases write a YAML recipe (the way users give input);
command-line cases use ``tests/runs.py::tiny_run_args``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from faults import expect_exit, expect_fault
from rlhf_lightning.cli import main
from runs import chat_model_dir, tiny_recipe, tiny_run_args
from tiny import make_model_dir

TESTS = Path(__file__).parent.parent
OVERWRITE = ["--overwrite", "true"]


def _set(recipe: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = recipe
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value


def _rename(recipe: dict, dotted: str, new: str) -> None:
    *parents, last = dotted.split(".")
    node = recipe
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[new] = node.pop(last)


# (recipe change, key the message must name, text the problem or fix must contain)
RECIPE_CASES = {
    "unknown model key": (lambda r: _rename(r, "model.init_args.policy", "polcy"),
                          "model.init_args.polcy:", "did you mean 'policy'?"),
    "unknown trainer key": (lambda r: _set(r, "trainer.max_epoch", 3), "trainer.max_epoch:", "did you mean 'max_epochs'?"),
    "unknown rollout init arg": (lambda r: _set(r, "rollout.init_args.max_new_token", 3),
                                 "rollout.init_args.max_new_token:", "did you mean 'max_new_tokens'?"),
    "rollout in trainer.callbacks": (lambda r: _set(r, "trainer.callbacks", [r.pop("rollout")]),
                                     "trainer.callbacks[0]:", "top-level key 'rollout:'"),
    "bad rollout value": (lambda r: _set(r, "rollout.init_args.top_p", 1.5), "rollout.init_args.top_p:",
                          "must be in (0, 1]"),
    "nan kl_coef": (lambda r: _set(r, "rollout.init_args.kl_coef", float("nan")), "rollout.init_args.kl_coef:",
                    "finite"),
    "GRPO with a shaped reward": (lambda r: _set(r, "model.init_args.objective",
                                                 {"class_path": "rlhf_lightning.objectives.GRPO"}),
                                  "rollout.init_args.kl_coef:", "set rollout.init_args.kl_coef: 0"),
    "reward asks for a missing column": (lambda r: _set(r, "model.init_args.reward.init_args.function",
                                                        "tiny.answer_reward"),
                                         "model.init_args.reward:", "data column 'answer'"),
    "hybrid pairs without a response column": (
        lambda r: (_set(r, "model.init_args.objective.init_args.pairs", "dataset"),
                   _set(r, "data.init_args.reference_column", None)),
        "data.init_args.reference_column:", "pairs samples with data set responses"),
    "evaluation without held-out prompts": (
        lambda r: _set(r, "trainer.callbacks", [{"class_path": "rlhf_lightning.callbacks.WinRateEvaluation"}]),
        "data.init_args.test_file:", "evaluation needs the 'test' split"),
    "evaluation judge asks for a missing column": (
        lambda r: (_set(r, "trainer.callbacks", [{"class_path": "rlhf_lightning.callbacks.WinRateEvaluation",
                                                   "init_args": {"judge": {
                                                       "class_path": "rlhf_lightning.rewards.FunctionReward",
                                                       "init_args": {"function": "tiny.answer_reward"}}}}]),
                   _set(r, "data.init_args.test_file", r["data"]["init_args"]["train_file"])),
        "trainer.callbacks[WinRateEvaluation].init_args.judge:", "data column 'answer'"),
    "evaluation max_new_tokens 0": (
        lambda r: _set(r, "trainer.callbacks", [{"class_path": "rlhf_lightning.callbacks.WinRateEvaluation",
                                                  "init_args": {"max_new_tokens": 0}}]),
        "trainer.callbacks[WinRateEvaluation].init_args.max_new_tokens:", "must be ≥ 1"),
    "prompt + max_new_tokens over the model's positions": (
        lambda r: _set(r, "rollout.init_args.max_new_tokens", 64), "rollout.init_args.max_new_tokens:",
        "exceed the policy's 64 positions"),
    "data tokenizer of another model": (
        lambda r: _set(r, "data.init_args.tokenizer", r["_chat_model"]), "data.init_args.tokenizer:",
        "not the policy's"),
    "policy tokenizer larger than the embeddings": (
        lambda r: _set(r, "model.init_args.policy.tokenizer", r["_chat_model"]),
        "model.init_args.policy.tokenizer:", "embedding rows"),
    "bad reward weight": (lambda r: _set(r, "model.init_args.reward", [
        {"source": r["model"]["init_args"]["reward"], "weight": float("inf")}]),
        "model.init_args.reward[0].weight:", "finite number"),
    "unknown objective init arg": (lambda r: _set(r, "model.init_args.objective.init_args.eta_", 1.0),
                                   "model.init_args.objective.init_args.eta_:", "did you mean 'eta'?"),
    "unknown nested key": (lambda r: _rename(r, "model.init_args.policy.path", "pth"),
                           "model.init_args.policy.pth:", "did you mean 'path'?"),
    "unknown top-level key": (lambda r: _rename(r, "model", "modle"), "modle:", "did you mean 'model'?"),
    "misspelt class_path": (lambda r: _set(r, "model.init_args.objective.class_path", "rlhf_lightning.REBELL"),
                            "model.init_args.objective.class_path:", "did you mean 'rlhf_lightning.REBEL'?"),
    "wrong type float": (lambda r: _set(r, "model.init_args.lr", "abc"), "model.init_args.lr:", "expected float, got 'abc'"),
    "wrong type int": (lambda r: _set(r, "data.init_args.batch_size", "x"),
                       "data.init_args.batch_size:", "expected int, got 'x'"),
    "wrong choice": (lambda r: _set(r, "model.init_args.policy.dtype", "fp32"),
                     "model.init_args.policy.dtype:", "one of 'float32', 'bfloat16', 'float16'"),
    "wrong trainer type": (lambda r: _set(r, "trainer.max_epochs", "two"), "trainer.max_epochs:", "expected int or null"),
    "missing required key": (lambda r: _set(r, "model.init_args.policy", {"dtype": "float32"}),
                             "model.init_args.policy.path:", "required"),
    "invalid value from __init__": (lambda r: _set(r, "model.init_args.lr", -1.0), "model.init_args.lr:", "must be > 0"),
    "infinite lr": (lambda r: _set(r, "model.init_args.lr", float("inf")), "model.init_args.lr:", "finite"),
    "negative warmup": (lambda r: _set(r, "model.init_args.warmup_steps", -3), "model.init_args.warmup_steps:",
                        "must be ≥ 0"),
    "negative weight decay": (lambda r: _set(r, "model.init_args.weight_decay", -0.1), "model.init_args.weight_decay:",
                              "must be ≥ 0"),
    "an FSDP variant the library does not have": (lambda r: _set(r, "trainer.strategy", "fsdp_cpu_offload"),
                                                  "trainer.strategy:", "use strategy: fsdp"),
    "zero max_grad_norm": (lambda r: _set(r, "model.init_args.max_grad_norm", 0.0), "model.init_args.max_grad_norm:",
                           "or null (no clipping)"),
    "policy given as a string": (lambda r: _set(r, "model.init_args.policy", r["model"]["init_args"]["policy"]["path"]),
                                 "model.init_args.policy:", "write it as `policy: {path: "),
    "negative top_k": (lambda r: _set(r, "rollout.init_args.top_k", -3), "rollout.init_args.top_k:", "must be ≥ 0"),
    "zero temperature": (lambda r: _set(r, "rollout.init_args.temperature", 0.0), "rollout.init_args.temperature:",
                         "must be > 0 for sampling"),
    "negative temperature": (lambda r: _set(r, "rollout.init_args.temperature", -1.0),
                             "rollout.init_args.temperature:", "must be ≥ 0"),
    "zero top_p": (lambda r: _set(r, "rollout.init_args.top_p", 0.0), "rollout.init_args.top_p:", "must be in (0, 1]"),
    "infinite kl_coef": (lambda r: _set(r, "rollout.init_args.kl_coef", float("inf")), "rollout.init_args.kl_coef:",
                         "finite number ≥ 0"),
    "negative kl_coef": (lambda r: _set(r, "rollout.init_args.kl_coef", -1.0), "rollout.init_args.kl_coef:",
                         "finite number ≥ 0"),
    "rollout max_new_tokens 0": (lambda r: _set(r, "rollout.init_args.max_new_tokens", 0),
                                 "rollout.init_args.max_new_tokens:", "must be ≥ 1"),
    "nan no_eos_reward": (lambda r: _set(r, "rollout.init_args.no_eos_reward", float("nan")),
                          "rollout.init_args.no_eos_reward:", "finite number or null"),
    "a rollout key of another class": (lambda r: _set(r, "rollout.init_args.samples_per_prompt", 4),
                                       "rollout.init_args.samples_per_prompt:", "valid keys here: generator"),
    "zero eta": (lambda r: _set(r, "model.init_args.objective.init_args.eta", 0.0),
                 "model.init_args.objective.init_args.eta:", "must be > 0"),
    "nan eta": (lambda r: _set(r, "model.init_args.objective.init_args.eta", float("nan")),
                "model.init_args.objective.init_args.eta:", "must be > 0, got nan"),
    "zero inner_epochs": (lambda r: _set(r, "model.init_args.objective.init_args.inner_epochs", 0),
                          "model.init_args.objective.init_args.inner_epochs:", "must be ≥ 1"),
    "zero batch_size": (lambda r: _set(r, "data.init_args.batch_size", 0), "data.init_args.batch_size:", "must be ≥ 1"),
    "negative batch_size": (lambda r: _set(r, "data.init_args.batch_size", -2), "data.init_args.batch_size:",
                            "must be ≥ 1"),
    "zero micro_batch_size": (lambda r: _set(r, "model.init_args.micro_batch_size", 0),
                              "model.init_args.micro_batch_size:", "must be ≥ 1 or null"),
    "misspelt lr_schedule": (lambda r: _set(r, "model.init_args.lr_schedule", "cosin"), "model.init_args.lr_schedule:",
                             "one of 'constant', 'linear', 'cosine'"),
    "zero cpu_threads": (lambda r: _set(r, "cpu_threads", 0), "cpu_threads:", "must be ≥ 1 or null"),
    "seed of text": (lambda r: _set(r, "seed_everything", "abc"), "seed_everything:", "expected bool or int"),
    "unknown precision": (lambda r: _set(r, "trainer.precision", "bf17"), "trainer.precision:", "'bf16-mixed'"),
    "unknown DeepSpeed stage": (lambda r: _set(r, "trainer.strategy", "deepspeed_stage_5"), "trainer.strategy:",
                                "deepspeed_stage_2 or deepspeed_stage_3"),
    "FSDP1 by class path": (lambda r: _set(r, "trainer.strategy", "lightning.pytorch.strategies.FSDPStrategy"),
                            "trainer.strategy:", "FSDPStrategy (FSDP1) is not supported"),
    "an accelerator this machine lacks": (lambda r: _set(r, "trainer.accelerator", "mps"), "trainer:",
                                          "check the trainer settings"),
    "limit_train_batches 0": (lambda r: _set(r, "trainer.limit_train_batches", 0), "trainer.limit_train_batches:",
                              "would train on nothing"),
    "max_epochs 0": (lambda r: _set(r, "trainer.max_epochs", 0), "trainer.max_epochs:", "would train on nothing"),
    "max_steps 0": (lambda r: _set(r, "trainer.max_steps", 0), "trainer.max_steps:", "would train on nothing"),
    "trainer gradient accumulation": (lambda r: _set(r, "trainer.accumulate_grad_batches", 4),
                                      "trainer.accumulate_grad_batches:", "model.init_args.micro_batch_size"),
    "trainer gradient clipping": (lambda r: _set(r, "trainer.gradient_clip_val", 1.0), "trainer.gradient_clip_val:",
                                  "model.init_args.max_grad_norm"),
    "callback that does not exist": (lambda r: _set(r, "trainer.callbacks", [
        {"class_path": "lightning.pytorch.callbacks.NoSuchCallback"}]), "trainer.callbacks.class_path:",
        "cannot import 'lightning.pytorch.callbacks.NoSuchCallback'"),
    "reward class that does not exist": (lambda r: _set(r, "model.init_args.reward", {
        "class_path": "rlhf_lightning.rewards.NoReward"}), "model.init_args.reward.class_path:", "cannot import"),
    "reward function that does not exist": (lambda r: _set(r, "model.init_args.reward.init_args.function",
                                                           "tiny.no_such_fn"),
                                            "model.init_args.reward.init_args.function:", "has no attribute 'no_such_fn'"),
    "reward function in a missing module": (lambda r: _set(r, "model.init_args.reward.init_args.function", "nomod.fn"),
                                            "model.init_args.reward.init_args.function:", "cannot import module 'nomod'"),
    "reward function that is not callable": (lambda r: _set(r, "model.init_args.reward.init_args.function",
                                                            "tiny.WORDS"),
                                             "model.init_args.reward.init_args.function:", "is not callable"),
    "online objective without a reward": (lambda r: _set(r, "model.init_args.reward", None), "model.init_args.reward:",
                                          "no reward source is set"),
    "no objective": (lambda r: _set(r, "model.init_args.objective", None), "model.init_args.objective:", "required"),
    "objective that is not an Objective": (lambda r: _set(r, "model.init_args.objective", {
        "class_path": "torch.nn.Linear", "init_args": {"in_features": 1, "out_features": 1}}),
        "model.init_args.objective:", "does not correspond to a subclass of Objective"),
    "zero divergence patience": (lambda r: _set(r, "model.init_args.divergence", {"patience": 0}),
                                 "model.init_args.divergence.patience:", "must be ≥ 1"),
    "zero zero_gradient_steps": (lambda r: _set(r, "model.init_args.divergence", {"zero_gradient_steps": 0}),
                                 "model.init_args.divergence.zero_gradient_steps:", "must be ≥ 1 or null"),
    "unknown divergence action": (lambda r: _set(r, "model.init_args.divergence", {"action": "explode"}),
                                  "model.init_args.divergence", "one of 'stop', 'warn'"),
    "max_prompt_length 0": (lambda r: _set(r, "data.init_args.max_prompt_length", 0),
                            "data.init_args.max_prompt_length:", "are longer than 0 tokens"),
    "weights_only of text": (lambda r: _set(r, "weights_only", "maybe"), "weights_only:", "expected bool or null"),
}


@pytest.mark.parametrize("case", list(RECIPE_CASES))
def test_bad_recipe_file(case, tiny_model, tiny_data, run_root, tmp_path, capsys):
    change, key, text = RECIPE_CASES[case]
    recipe = copy.deepcopy(tiny_recipe(tiny_model, tiny_data, run_root))
    recipe["overwrite"] = True
    recipe["_chat_model"] = str(chat_model_dir(tmp_path))  # a model of another family (cases that need one)
    change(recipe)
    del recipe["_chat_model"]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    message = expect_fault(["run", str(path)], capsys, text, protect=run_root)
    assert message.startswith(f"rlhf-lightning: error in the recipe: {key}"), message


# command-line overrides: (extra args, key, text)
ARG_CASES = {
    "--model.lr abc": (["--model.lr", "abc"], "model.init_args.lr:", "expected float, got 'abc'"),
    "--data.batch_size x": (["--data.batch_size", "x"], "data.init_args.batch_size:", "expected int, got 'x'"),
    "--model.polcy": (["--model.polcy", "x"], "model.init_args.polcy:", "did you mean 'policy'?"),
    # abbreviations are off: argparse would otherwise expand this to --trainer.max_epochs silently
    "--trainer.max_epoch": (["--trainer.max_epoch", "3"], "trainer.max_epoch:", "did you mean 'max_epochs'?"),
    "--data.on_long_prompt skp": (["--data.on_long_prompt", "skp"], "data.init_args.on_long_prompt:", "'error', 'skip'"),
}


@pytest.mark.parametrize("case", list(ARG_CASES))
def test_bad_command_line_value(case, tiny_model, tiny_data, run_root, capsys):
    extra, key, text = ARG_CASES[case]
    args = tiny_run_args(tiny_model, tiny_data, run_root, batches=1, extra=extra + OVERWRITE)
    message = expect_fault(args, capsys, text, protect=run_root)
    assert message.startswith(f"rlhf-lightning: error in the recipe: {key}"), message


@pytest.mark.parametrize("content, text", [("model:\n  class_path: x\n   bad: [\n", "is not valid YAML: mapping values "
                                            "are not allowed here at line 3, column 7"),
                                           ("", "is empty"), ("- a\n- b\n", "holds a list, not a mapping of keys")])
def test_bad_recipe_file_names_the_file(content, text, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(content)
    message = expect_exit(["run", str(recipe)], capsys)
    assert f"'{recipe}' {text}" in message, message


def test_missing_recipe_file(capsys, tmp_path):
    message = expect_exit(["run", str(tmp_path / "missing.yaml")], capsys)
    assert "missing.yaml' does not exist" in message


def test_run_without_recipe_prints_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run"])
    assert exit_info.value.code == 2
    assert "usage: rlhf-lightning run RECIPE.yaml" in capsys.readouterr().err


# ------------------------------------------------------------------ errors found while the run starts
def _refused(tiny_model, tiny_data, run_root, capsys, extra: list[str], text: str = "") -> str:
    """One rollout batch with ``extra`` into the finished run's folder (``--overwrite true``): refused, nothing
    lost."""
    args = tiny_run_args(tiny_model, tiny_data, run_root, batches=1, extra=extra + OVERWRITE)
    return expect_fault(args, capsys, text, protect=run_root)


def test_model_path_does_not_exist(tiny_model, tiny_data, run_root, tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    message = _refused(tiny_model, tiny_data, run_root, capsys, ["--model.policy.path", str(missing)])
    assert message.startswith("rlhf-lightning: error in the recipe: model.init_args.policy.path:")
    assert f"'{missing}' does not exist" in message and "fix:" in message


@pytest.mark.parametrize("kind", ["empty directory", "data file", "tokenizer only"])
def test_model_path_is_not_a_model(kind, tiny_model, tiny_data, run_root, tmp_path, capsys):
    """A path that exists but is not a Hugging Face model directory."""
    if kind == "empty directory":
        path = tmp_path / "notes"
        path.mkdir()
        (path / "readme.txt").write_text("not a model")
        problem = "holds no tokenizer or model"
    elif kind == "data file":
        path, problem = Path(tiny_data["train"]), "is a file, not a model"
    else:
        path = tmp_path / "tokenizer"
        path.mkdir()
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (tiny_model / name).exists():
                shutil.copy(tiny_model / name, path / name)
        problem = "has no config.json, so it is not a saved model"
    message = _refused(tiny_model, tiny_data, run_root, capsys, ["--model.policy.path", str(path)])
    assert message.startswith("rlhf-lightning: error in the recipe: model.init_args.policy.path:"), message
    assert problem in message, message


def test_data_file_does_not_exist(tiny_model, tiny_data, run_root, tmp_path, capsys):
    missing = tmp_path / "no-such-data.jsonl"
    message = _refused(tiny_model, tiny_data, run_root, capsys, ["--data.train_file", str(missing)])
    assert message.startswith("rlhf-lightning: error in the recipe: data.init_args.train_file:")
    assert "does not exist" in message


def test_data_without_prompt_column(tiny_model, tiny_data, run_root, tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": "say : cat dog"}) + "\n" for _ in range(16)))
    message = _refused(tiny_model, tiny_data, run_root, capsys, ["--data.train_file", str(rows)])
    assert message.startswith("rlhf-lightning: error in the recipe: data.init_args.train_file:")
    assert "has no column 'prompt' (columns: text)" in message
    assert "set data.init_args.prompt_column to the column" in message  # the fix names the option


def _with_long_prompts(tiny_data, tmp_path) -> Path:
    """The tiny training prompts (4 tokens each) plus 8 prompts of 12 tokens."""
    path = tmp_path / "mixed.jsonl"
    long = json.dumps({"prompt": "say : " + " ".join(["cat", "dog"] * 5)}) + "\n"
    path.write_text(Path(tiny_data["train"]).read_text() + long * 8)
    return path


def test_long_prompt_is_an_error_by_default(tiny_model, tiny_data, run_root, tmp_path, capsys):
    extra = ["--data.train_file", str(_with_long_prompts(tiny_data, tmp_path)), "--data.max_prompt_length", "6"]
    message = _refused(tiny_model, tiny_data, run_root, capsys, extra)
    assert message.startswith("rlhf-lightning: error in the recipe: data.init_args.max_prompt_length:")
    assert "8 of 72 prompts" in message and "on_long_prompt: skip" in message


def test_long_prompt_skipped_with_a_warning(tiny_model, tiny_data, tmp_path):
    extra = ["--data.train_file", str(_with_long_prompts(tiny_data, tmp_path)), "--data.max_prompt_length", "6",
             "--data.on_long_prompt", "skip"]
    with pytest.warns(UserWarning, match="skipped 8 of 72 prompts longer than 6 tokens"):
        main(tiny_run_args(tiny_model, tiny_data, tmp_path, batches=1, extra=extra))
    assert (tmp_path / "summary.json").exists()


def test_tokenizer_without_pad_token_uses_eos(tiny_data, tmp_path):
    """No pad token: a warning (not an error), pad = EOS, and training runs."""
    model = make_model_dir(tmp_path / "no-pad-model", with_pad=False)
    with pytest.warns(UserWarning, match="has no pad token; using EOS"):
        main(tiny_run_args(model, tiny_data, tmp_path / "run", batches=2))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["reward"] == summary["reward"]  # finite metrics were written after 2 batches


# ------------------------------------------------------------------ the real console script
def test_console_script_bad_recipe(tiny_model, tiny_data, tmp_path):
    recipe = tiny_recipe(tiny_model, tiny_data, tmp_path)
    _rename(recipe, "model.init_args.policy", "polcy")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    script = shutil.which("rlhf-lightning", path=str(Path(sys.executable).parent)) or shutil.which("rlhf-lightning")
    assert script, "the rlhf-lightning console script is not installed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS), "WANDB_MODE": "offline"}
    result = subprocess.run([script, "run", str(path)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "rlhf-lightning: error in the recipe: model.init_args.polcy: unknown key 'polcy'" in result.stderr
    assert "did you mean 'policy'?" in result.stderr


def test_unrecognised_parser_message_is_passed_on():
    """A jsonargparse message this translation does not know still comes out whole, on one line."""
    from rlhf_lightning.cli import explain_parse_error

    error = explain_parse_error("Something new:\n  went wrong\n    somewhere")
    assert error.field == "recipe"
    assert error.problem == "Something new: went wrong somewhere"


def test_empty_prompts_are_an_error(tiny_model, tiny_data, run_root, tmp_path, capsys):
    train = tmp_path / "train.jsonl"
    lines = tiny_data["train"].read_text().splitlines()
    train.write_text("\n".join(lines[:3] + [json.dumps({"prompt": " ", "reference": "good"})] + lines[3:]) + "\n")
    message = _refused(tiny_model, tiny_data, run_root, capsys, ["--data.train_file", str(train)])
    assert "data.init_args.train_file:" in message and "1 of" in message and "row 3" in message, message
