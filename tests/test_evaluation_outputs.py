"""What the win-rate evaluation writes tells the splits apart: the printed label and ``samples.jsonl``'s split."""

from __future__ import annotations

import json

from runs import run_cli, tiny_run_args

ARGS = ("--trainer.enable_checkpointing", "false", "--trainer.callbacks.every_n_rollouts", "1")


def test_validation_and_final_test_evaluations_are_labelled_apart(tiny_model, tiny_data, tmp_path, capsys):
    extra = [*ARGS, "--data.validation_file", str(tiny_data["test"])]
    run_cli(tiny_run_args(tiny_model, tiny_data, tmp_path, batches=2, extra=extra))
    printed = capsys.readouterr().out
    assert "[validation evaluation after 1 rollout batches]" in printed
    assert "[test evaluation after 2 rollout batches]" in printed
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    splits = [(row["rollouts"], row["split"]) for row in rows]
    assert set(splits) == {(1, "validation"), (2, "validation"), (2, "test")}
    assert splits[-1] == (2, "test")  # the final evaluation, on the test split, comes last


def test_the_embedded_judge_knows_its_best_responses():
    import random

    from rlhf_lightning.tasks.summarize import GoldJudge
    from rlhf_lightning.tasks.summarize.corpus import CorpusConfig, make_prompt, oracle_summary, sample_post

    judge = GoldJudge()
    prompt = make_prompt(sample_post(random.Random(0), CorpusConfig()))
    best = judge.best_responses([prompt])
    assert best == [oracle_summary(prompt)] and best[0]
    worse = [best[0].split()[0], best[0] + " " + best[0], ""]
    assert (judge.score([prompt] * 3, worse) < judge.score([prompt], best)).all()
