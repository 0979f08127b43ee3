"""Fuzz: damaged model and data files found on disk (truncated weights, a data file of ints, a malformed JSON
line, a folder that is not a data set): each one clear message (exit code 2) naming the field or file, and
the finished run in the folder left whole."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from runs import tiny_run_args, without_evaluation
from faults import expect_fault


def _base(tiny_model, tiny_data, root) -> list[str]:
    return without_evaluation(tiny_run_args(tiny_model, tiny_data, root, batches=1)) + ["--overwrite", "true"]


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
    "truncated safetensors": (lambda m, d, r, t, a: _replace(a, str(m), str(_corrupt_model(m, t))),
                              "model.init_args.policy.path: cannot load a causal LM"),
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
def test_fault_is_one_message(case, tiny_model, tiny_data, run_root, tmp_path, capsys):
    build, text = CASES[case]
    args = build(tiny_model, tiny_data, run_root, tmp_path, _base(tiny_model, tiny_data, run_root))
    expect_fault(args, capsys, text.format(t=tmp_path), protect=run_root)
