"""Can the headline task's model represent the answer? The SFT model class of the task, trained on *oracle*
headlines instead of interns' (same posts, steps and learning rate as the task's build), evaluated greedily on the
test posts against the editors' references.

    python benchmarks/headline_capacity.py     # ~2 min on 2 cores → benchmarks/results/headline_capacity.json

If it comes close to the judge's maximum, what RL leaves on the table in Table 1 is what it did not find in its
budget, not what the model cannot express.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from common import ROOT
from rlhf_lightning.tasks.headline.build import build_task
from rlhf_lightning.tasks.headline.corpus import HeadlineConfig, make_splits, oracle_headline
from rlhf_lightning.tasks.headline.judge import headline_score
from rlhf_lightning.tasks.summarize.build import TaskFiles, read_split, train_and_save_sft
from rlhf_lightning.tasks.summarize.corpus import Example
from rlhf_lightning.tasks.summarize.evaluate import generate_responses
from rlhf_lightning.tasks.summarize.sft import SFTConfig
from rlhf_lightning.tasks.summarize.tokenizer import train_tokenizer


def main() -> None:
    from inspect import signature

    from transformers import AutoModelForCausalLM, AutoTokenizer

    defaults = {k: p.default for k, p in signature(build_task).parameters.items()}
    sizes = {"train": defaults["n_train"], "validation": defaults["n_validation"], "test": defaults["n_test"],
             "sft": defaults["n_sft"]}
    splits = make_splits(sizes, 0, HeadlineConfig())  # the task's own posts (seed 0), as build_task draws them
    task = build_task(ROOT / "runs" / ".cache" / "headline", progress=False)
    test = read_split(task.split("test"))
    assert [r["prompt"] for r in test] == [e.prompt for e in splits["test"]], "the task's build differs"
    examples = [Example(e.prompt, oracle_headline(e.prompt)) for e in splits["sft"]]
    config = SFTConfig(steps=defaults["sft_steps"], batch_size=defaults["sft_batch_size"], lr=defaults["sft_lr"])
    tokenizer = train_tokenizer([f"{e.prompt} {e.reference}" for e in examples], config.context)
    with tempfile.TemporaryDirectory() as folder:
        files = TaskFiles.at(folder)
        stats = train_and_save_sft(files, tokenizer, examples, config, 0, True, time.perf_counter())
        model, tokenizer = AutoModelForCausalLM.from_pretrained(files.sft), AutoTokenizer.from_pretrained(files.sft)
    prompts = [r["prompt"] for r in test]
    answers = generate_responses(model, tokenizer, prompts, do_sample=False, temperature=1.0, max_new_tokens=8,
                                 batch_size=256)
    scores = [headline_score(p, a) for p, a in zip(prompts, answers)]
    references = [headline_score(r["prompt"], r["reference"]) for r in test]
    result = {"sft_final_loss": round(stats["final_loss"], 4), "reward": round(statistics.fmean(scores), 4),
              "oracle_reward": round(statistics.fmean(headline_score(p, oracle_headline(p)) for p in prompts), 4),
              "exact_oracle_share": statistics.fmean(a == oracle_headline(p) for p, a in zip(prompts, answers)),
              "win_rate_vs_reference": statistics.fmean((s > r) + 0.5 * (s == r) for s, r in zip(scores, references)),
              "test_posts": len(prompts)}
    out = ROOT / "benchmarks" / "results" / "headline_capacity.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
