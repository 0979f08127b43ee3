"""Faults in checkpoints, model files, data files, reward functions and recipe files: each one clear message
(exit code 2, no traceback) naming the field or file and the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from runs import tiny_run_args, without_evaluation
from faults import expect_exit

BAD_REWARDS = '''
def short(prompts, responses):
    return [0.0]


def strings(prompts, responses):
    return ["x"] * len(responses)
'''


def _base(tiny_model, tiny_data, root) -> list[str]:
    return without_evaluation(tiny_run_args(tiny_model, tiny_data, root, batches=1))


def _replace(args: list[str], old: str, new: str) -> list[str]:
    args = list(args)
    args[args.index(old)] = new
    return args


def _corrupt_model(tiny_model: Path, tmp: Path) -> Path:
    bad = tmp / "bad_model"
    shutil.copytree(tiny_model, bad)
    (bad / "model.safetensors").write_bytes((tiny_model / "model.safetensors").read_bytes()[:500])
    return bad


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _malformed(tiny_data, tmp: Path) -> Path:
    lines = tiny_data["train"].read_text().splitlines()
    lines[6] = lines[6][:-3]
    path = tmp / "malformed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


CASES = {  # name → (args from (model, data, root, tmp), text the message must contain)
    "missing --ckpt_path": (lambda m, d, r, t, a: a + ["--ckpt_path", str(t / "nope.ckpt")],
                            "ckpt_path: '{t}/nope.ckpt' does not exist"),
    "--ckpt_path is a folder": (lambda m, d, r, t, a: (t / "dir.ckpt").mkdir() or a + ["--ckpt_path", str(t / "dir.ckpt")],
                                "cannot be read"),
    "--ckpt_path of another shape": (lambda m, d, r, t, a: torch.save({"foo": 1}, t / "other.ckpt")
                                     or a + ["--ckpt_path", str(t / "other.ckpt")],
                                     "is not a checkpoint of a training run"),
    "truncated safetensors": (lambda m, d, r, t, a: _replace(a, str(m), str(_corrupt_model(m, t))),
                              "model.init_args.policy.path: cannot load a causal LM"),
    "reward of the wrong length": (lambda m, d, r, t, a: _replace(a, "tiny.good_word_reward", "bad_rewards.short"),
                                   "'bad_rewards.short' returned 1 rewards for 16 responses"),
    "reward of strings": (lambda m, d, r, t, a: _replace(a, "tiny.good_word_reward", "bad_rewards.strings"),
                          "must return one number per response, got str values"),
    "int prompts": (lambda m, d, r, t, a: _replace(a, str(d["train"]), str(_jsonl(
        t / "ints.jsonl", [{"prompt": i, "reference": "good"} for i in range(20)]))),
                    "data.init_args.prompt_column: 20 of 20 prompts"),
    "malformed JSON line": (lambda m, d, r, t, a: _replace(a, str(d["train"]), str(_malformed(d, t))),
                            "line 7 of"),
    "folder that is not a data set": (lambda m, d, r, t, a: (t / "notds").mkdir() or _replace(a, str(d["train"]),
                                                                                              str(t / "notds")),
                                      "is a folder but not a data set written by save_to_disk"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fault_is_one_message(case, tiny_model, tiny_data, tmp_path, capsys, monkeypatch):
    (tmp_path / "bad_rewards.py").write_text(BAD_REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    build, text = CASES[case]
    args = build(tiny_model, tiny_data, tmp_path / "run", tmp_path, _base(tiny_model, tiny_data, tmp_path / "run"))
    message = expect_exit(args, capsys)
    assert text.format(t=tmp_path) in message, message


@pytest.mark.parametrize("content, text", [("model:\n  class_path: x\n   bad: [\n", "is not valid YAML: mapping values "
                                            "are not allowed here at line 3, column 7"),
                                           ("", "is empty"), ("- a\n- b\n", "holds a list, not a mapping of keys")])
def test_bad_recipe_file_names_the_file(content, text, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(content)
    message = expect_exit(["run", str(recipe)], capsys)
    assert f"'{recipe}' {text}" in message, message
