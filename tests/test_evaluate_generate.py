"""``rlhf-lightning evaluate`` and ``rlhf-lightning generate`` on a trained tiny run: the evaluation of a checkpoint
or an exported policy reproduces the end-of-training one, generation reproduces the evaluation's greedy
responses, and bad input is one message. Also the summary's final losses and the objective's own metrics."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest
import yaml

from rlhf_lightning.cli import main
from rlhf_lightning.generate import main as generate
from runs import run_cli, tiny_recipe
from test_offline_end_to_end import offline_args, offline_files

EVAL_KEYS = ("win_rate_vs_sft", "reward", "sft_reward", "win_rate_vs_reference", "reference_reward", "eval_split")


def write_recipe(path: Path, recipe: dict) -> str:
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


@pytest.fixture(scope="module")
def trained(tiny_model, tiny_data, tmp_path_factory) -> dict:
    """Four rollout batches of REBEL with a last checkpoint, an exported policy and a greedy test evaluation."""
    base = tmp_path_factory.mktemp("trained")
    root = base / "run"
    recipe = copy.deepcopy(tiny_recipe(tiny_model, tiny_data, root))
    recipe["trainer"].update(limit_train_batches=4, enable_checkpointing=True, logger={
        "class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(root)}})
    recipe["trainer"]["callbacks"] = [
        {"class_path": "rlhf_lightning.callbacks.WinRateEvaluation", "init_args": {"max_new_tokens": 6}},
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True, "save_top_k": 0}},
        {"class_path": "rlhf_lightning.callbacks.ExportPolicy"},
    ]
    recipe["data"]["init_args"]["test_file"] = str(tiny_data["test"])
    path = write_recipe(base / "recipe.yaml", recipe)
    main(["run", path])
    return {"recipe": path, "root": root, "summary": json.loads((root / "summary.json").read_text()),
            "config": recipe, "base": base}


def samples(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]


def test_evaluate_a_checkpoint_reproduces_the_final_evaluation(trained):
    before = (trained["root"] / "summary.json").read_text()
    main(["evaluate", trained["recipe"], "--ckpt_path", "last"])
    folder = trained["root"] / "evaluation" / "last"
    result = json.loads((folder / "summary.json").read_text())
    for key in EVAL_KEYS:  # greedy decoding of the same weights: the same responses and scores
        assert result[key] == trained["summary"][key], key
    assert result["evaluated_checkpoint"] == str(trained["root"] / "checkpoints" / "last.ckpt")
    assert result["rollout_batches"] == 4 and result["objective"] == "rebel"
    assert abs(result["kl"]) < 5  # sampled: an estimate, not the same draw
    rows = samples(folder)
    assert rows and {row["split"] for row in rows} == {"test"} and {row["rollouts"] for row in rows} == {4}
    assert [r["policy"] for r in rows] == [r["policy"] for r in samples(trained["root"]) if r["rollouts"] == 4]
    assert (trained["root"] / "summary.json").read_text() == before  # the training run's outputs stay as they are
    assert not (folder / "checkpoints").exists() and not (folder / "policy").exists()
    assert yaml.safe_load((folder / "config.yaml").read_text())["ckpt_path"] == result["evaluated_checkpoint"]


def test_evaluate_an_exported_policy_compares_with_the_recipes_policy(trained):
    main(["evaluate", trained["recipe"], "--policy_dir", str(trained["root"] / "policy")])
    result = json.loads((trained["root"] / "evaluation" / "policy" / "summary.json").read_text())
    for key in EVAL_KEYS:  # the reference (SFT) side is the recipe's policy, not the export
        assert result[key] == trained["summary"][key], key
    assert result["evaluated_policy_dir"] == str(trained["root"] / "policy")


def test_evaluating_twice_into_one_folder_needs_overwrite(trained, capsys):
    args = ["evaluate", trained["recipe"], "--ckpt_path", str(trained["root"] / "checkpoints" / "last.ckpt"),
            "--trainer.default_root_dir", str(trained["base"] / "again")]
    main(args)
    assert (trained["base"] / "again" / "evaluation" / "last" / "summary.json").is_file()
    with pytest.raises(SystemExit) as stop:
        main(args)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err and "trainer.default_root_dir" in err
    main([*args, "--overwrite", "true"])


@pytest.mark.parametrize("flags, field, words", [
    ([], "ckpt_path", "neither given"),
    (["--ckpt_path", "last", "--policy_dir", "x"], "ckpt_path", "both given"),
    (["--ckpt_path", "nowhere.ckpt"], "ckpt_path", "does not exist"),
    (["--policy_dir", "."], "policy_dir", "no config.json"),
])
def test_evaluate_bad_input_is_one_message(trained, capsys, flags, field, words):
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", trained["recipe"], *flags])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert f"{field}: " in err and words in err


def test_evaluate_needs_an_evaluation_in_the_recipe(trained, tmp_path, capsys):
    recipe = copy.deepcopy(trained["config"])
    recipe["trainer"]["callbacks"] = []
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", write_recipe(tmp_path / "r.yaml", recipe), "--ckpt_path",
              str(trained["root"] / "checkpoints" / "last.ckpt")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "trainer.callbacks: the recipe defines no evaluation" in err


def prompt_file(path: Path, prompts: list[str]) -> str:
    path.write_text("".join(json.dumps({"prompt": p, "id": i}) + "\n" for i, p in enumerate(prompts)))
    return str(path)


def test_generate_reproduces_the_evaluations_greedy_responses(trained, tmp_path):
    evaluated = [r for r in samples(trained["root"]) if r["rollouts"] == 4]
    prompts = prompt_file(tmp_path / "prompts.jsonl", [r["prompt"] for r in evaluated])
    out = tmp_path / "out.jsonl"
    main(["generate", "--policy_dir", str(trained["root"] / "policy"), "--prompts", prompts, "--output", str(out),
          "--temperature", "0", "--max_new_tokens", "6"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["response"] for r in rows] == [r["policy"] for r in evaluated]
    assert [r["id"] for r in rows] == list(range(len(evaluated))) and {r["sample"] for r in rows} == {0}
    assert all(0 < r["response_tokens"] <= 6 and isinstance(r["ended"], bool) for r in rows)
    # the checkpoint with its recipe gives the same policy
    again = tmp_path / "again.jsonl"
    main(["generate", trained["recipe"], "--ckpt_path", "last", "--prompts", prompts, "--output", str(again),
          "--temperature", "0"])
    assert [json.loads(line)["response"] for line in again.read_text().splitlines()] == [r["response"] for r in rows]


def test_generate_takes_the_recipes_sampling_and_the_flags_over_it(trained, tmp_path, capsys):
    prompts = prompt_file(tmp_path / "prompts.jsonl", ["say : cat dog", "say : sun moon"])
    main(["generate", trained["recipe"], "--ckpt_path", "last", "--prompts", prompts, "--num_samples", "3"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(rows) == 6 and [r["sample"] for r in rows] == [0, 1, 2] * 2
    assert max(r["response_tokens"] for r in rows) <= 6  # the recipe's rollout.max_new_tokens
    main(["generate", trained["recipe"], "--ckpt_path", "last", "--prompts", prompts, "--max_new_tokens", "2",
          "--rollout.max_new_tokens", "5"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(rows) == 2 and max(r["response_tokens"] for r in rows) <= 2


def test_generate_reads_prompt_lines_from_stdin(trained, capsys):
    stdin = io.StringIO('say : cat dog\n\n{"prompt": "say : sun", "tag": "x"}\n')
    assert generate(["--policy_dir", str(trained["root"] / "policy"), "--max_new_tokens", "3"], stdin=stdin) == 2
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["prompt"] for r in rows] == ["say : cat dog", "say : sun"] and rows[1]["tag"] == "x"


@pytest.mark.parametrize("flags, message", [
    (["--prompts", "missing.txt"], "--prompts: 'missing.txt' does not exist"),
    (["--ckpt_path", "last"], "--policy_dir: generate takes one of"),
    (["--temperature", "-1"], "--temperature: must be ≥ 0"),
    (["--prompt_column", "text"], "--prompt_column: row 0"),
])
def test_generate_bad_input_is_one_message(trained, tmp_path, capsys, flags, message):
    prompts = prompt_file(tmp_path / "p.jsonl", ["say : cat"])
    args = ["generate", "--policy_dir", str(trained["root"] / "policy"), "--prompts", prompts, *flags]
    with pytest.raises(SystemExit) as stop:
        main(args)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err and message in err, err


def test_generate_does_not_write_over_an_output(trained, tmp_path, capsys):
    prompts = prompt_file(tmp_path / "p.jsonl", ["say : cat"])
    out = tmp_path / "out.jsonl"
    out.write_text("kept\n")
    with pytest.raises(SystemExit):
        main(["generate", "--policy_dir", str(trained["root"] / "policy"), "--prompts", prompts, "--output", str(out)])
    assert out.read_text() == "kept\n" and "--output: " in capsys.readouterr().err
    main(["generate", "--policy_dir", str(trained["root"] / "policy"), "--prompts", prompts, "--output", str(out),
          "--overwrite"])
    assert json.loads(out.read_text())["prompt"] == "say : cat" and not list(tmp_path.glob("*.partial"))


def test_offline_summary_has_the_final_losses_and_the_objectives_metrics(tiny_model, tmp_path):
    files = offline_files(tmp_path / "data")
    dpo = ["--model.objective", "rlhf_lightning.objectives.DPO", "--model.objective.beta", "0.1"]
    run_cli(offline_args(tiny_model, files, tmp_path / "run", dpo, validation=True, evaluate=False))
    result = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert {"train_loss", "val_loss", "reward_accuracy", "reward_margin"} <= set(result), result
    assert result["reward_accuracy"] > 0.5 and result["reward_margin"] > 0 and result["val_loss"] < 0.6931
    assert result["train_batches"] == 8 and result["train_rows"] == 8 * 4 * 2  # batches × pairs × 2 rows
    assert result["rows_per_second"] > 0 and not {"rollout_batches", "samples_generated"} & set(result)


def test_evaluate_an_offline_run_gives_its_validation_metrics(tiny_model, tmp_path):
    files = offline_files(tmp_path / "data")
    dpo = ["--model.objective", "rlhf_lightning.objectives.DPO", "--model.objective.beta", "0.1"]
    args = offline_args(tiny_model, files, tmp_path / "run", dpo, validation=True, evaluate=False,
                        extra=["--trainer.enable_checkpointing", "true"])
    run_cli(args)
    trained = json.loads((tmp_path / "run" / "summary.json").read_text())
    (checkpoint,) = (tmp_path / "run").glob("**/*.ckpt")
    run_cli(["validate", *args[1:], "--ckpt_path", str(checkpoint)])
    (summary,) = (tmp_path / "run" / "evaluation").glob("*/summary.json")
    result = json.loads(summary.read_text())
    for key in ("val_loss", "reward_accuracy", "reward_margin"):
        assert result[key] == pytest.approx(trained[key], abs=1e-4), key


def test_evaluate_under_two_process_ddp_gives_the_single_process_numbers(trained):
    import os
    import subprocess
    import sys

    tests = Path(__file__).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])}
    folder = trained["base"] / "ddp"
    args = ["evaluate", trained["recipe"], "--ckpt_path", str(trained["root"] / "checkpoints" / "last.ckpt"),
            "--trainer.default_root_dir", str(folder), "--trainer.strategy", "ddp", "--trainer.devices", "2",
            "--trainer.accelerator", "cpu"]
    result = subprocess.run([sys.executable, "-m", "rlhf_lightning.cli", *args], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((folder / "evaluation" / "last" / "summary.json").read_text())
    assert summary["eval_prompts"] == 16  # both ranks' prompts gathered
    for key in EVAL_KEYS:
        assert summary[key] == trained["summary"][key], key


def test_a_lora_checkpoint_evaluates_and_generates_as_it_trained(tiny_model, tiny_data, tmp_path):
    """The checkpoint holds only the adapter: evaluate and generate put it on the recipe's base model."""
    root = tmp_path / "lora"
    recipe = copy.deepcopy(tiny_recipe(tiny_model, tiny_data, root))
    recipe["model"]["init_args"]["policy"]["lora"] = {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    recipe["model"]["init_args"]["lr"] = 0.03
    recipe["model"]["init_args"]["objective"]["init_args"]["inner_epochs"] = 2
    recipe["trainer"].update(limit_train_batches=6, enable_checkpointing=True)
    recipe["trainer"]["callbacks"] = [
        {"class_path": "rlhf_lightning.callbacks.WinRateEvaluation", "init_args": {"max_new_tokens": 6}},
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True, "save_top_k": 0}}]
    recipe["data"]["init_args"]["test_file"] = str(tiny_data["test"])
    path = write_recipe(tmp_path / "lora.yaml", recipe)
    main(["run", path])
    trained = json.loads((root / "summary.json").read_text())
    main(["evaluate", path, "--ckpt_path", "last"])
    result = json.loads((root / "evaluation" / "last" / "summary.json").read_text())
    for key in EVAL_KEYS:
        assert result[key] == trained[key], key
    evaluated = [r for r in samples(root) if r["rollouts"] == 6]
    assert any(r["policy"] != r["sft"] for r in evaluated)  # the adapter changed the responses
    prompts = prompt_file(tmp_path / "prompts.jsonl", [r["prompt"] for r in evaluated])
    out = tmp_path / "out.jsonl"
    main(["generate", path, "--ckpt_path", "last", "--prompts", prompts, "--output", str(out), "--temperature", "0"])
    assert [json.loads(line)["response"] for line in out.read_text().splitlines()] == [r["policy"] for r in evaluated]


def test_generate_renders_chat_prompts_with_the_chat_template(tmp_path, tiny_model, capsys):
    from runs import chat_model_dir

    chat = chat_model_dir(tmp_path)
    messages = [{"role": "user", "content": "say cat"}]
    prompts = tmp_path / "chat.jsonl"
    prompts.write_text(json.dumps({"prompt": messages}) + "\n")
    assert generate(["--policy_dir", str(chat), "--prompts", str(prompts), "--max_new_tokens", "3"]) == 1
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["prompt"] == messages and row["response_tokens"] <= 3
    with pytest.raises(SystemExit):  # the tiny tokenizer has no chat template
        main(["generate", "--policy_dir", str(tiny_model), "--prompts", str(prompts)])
    assert "--prompts: prompt 0: the prompt is a list of chat messages, but the tokenizer has no chat template" in \
        capsys.readouterr().err


def test_offline_evaluations_during_training_are_labelled_with_the_prompts_they_read(tiny_model, tmp_path):
    """An offline module's validation split holds pairs; its evaluations read eval_prompt_file: one label."""
    files = offline_files(tmp_path / "data")
    dpo = ["--model.objective", "rlhf_lightning.objectives.DPO"]
    run_cli(offline_args(tiny_model, files, tmp_path / "run", dpo, validation=True,
                         extra=["--trainer.callbacks.every_n_rollouts", "4"]))
    history = json.loads((tmp_path / "run" / "eval_history.json").read_text())
    assert [(h["rollouts"], h["split"]) for h in history] == [(4, "test"), (8, "test"), (8, "test")]
