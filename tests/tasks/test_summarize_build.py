"""Building the summarisation task: files, loading back, determinism and caching."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_lightning.rewards import win_rate
from rlhf_lightning.tasks.summarize import GoldJudge, build_task, generate_responses, read_split

SMALL = dict(n_train=96, n_validation=8, n_test=12, sft_steps=4, sft_batch_size=16, progress=False)


def _mtimes(files):
    paths = [files.train, files.validation, files.test, files.manifest, *sorted(files.sft.iterdir())]
    return {str(p): p.stat().st_mtime_ns for p in paths}


def _state(files):
    return AutoModelForCausalLM.from_pretrained(files.sft).state_dict()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_task(tmp_path_factory.mktemp("task") / "summarize", seed=3, **SMALL)


def test_writes_splits_and_manifest(built):
    sizes = {"train": 96, "validation": 8, "test": 12}
    prompts = set()
    for name, size in sizes.items():
        records = read_split(built.split(name))
        assert len(records) == size
        assert all(set(r) == {"prompt", "reference"} for r in records)
        assert all(r["prompt"].startswith("post: ") and r["prompt"].endswith(" summary:") for r in records)
        prompts |= {r["prompt"] for r in records}
    assert len(prompts) == sum(sizes.values())  # splits are disjoint
    manifest = json.loads(built.manifest.read_text())
    assert manifest["version"] and manifest["data"]["seed"] == 3 and manifest["sft"]["steps"] == 4


def test_model_and_tokenizer_load_back(built):
    model = AutoModelForCausalLM.from_pretrained(built.sft)
    tokenizer = AutoTokenizer.from_pretrained(built.sft)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert tokenizer.pad_token == "<pad>" and tokenizer.eos_token == "<eos>" and tokenizer.unk_token == "<unk>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert tokenizer.model_max_length == model.config.max_position_embeddings
    text = "post: apple the banana summary:"
    ids = tokenizer(text).input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["post", ":", "apple", "the", "banana", "summary", ":"]
    assert tokenizer.decode(tokenizer("apple banana").input_ids + [tokenizer.eos_token_id, tokenizer.pad_token_id],
                            skip_special_tokens=True) == "apple banana"


def test_generation_and_win_rate_run(built):
    model = AutoModelForCausalLM.from_pretrained(built.sft)
    tokenizer = AutoTokenizer.from_pretrained(built.sft)
    prompts = [r["prompt"] for r in read_split(built.test)]
    greedy = generate_responses(model, tokenizer, prompts, max_new_tokens=6, batch_size=5)
    assert len(greedy) == len(prompts) and all(isinstance(r, str) for r in greedy)
    assert generate_responses(model, tokenizer, prompts, max_new_tokens=6) == greedy
    assert tokenizer.padding_side == "right"  # restored
    judge = GoldJudge()
    assert win_rate(judge.score(prompts, greedy), judge.score(prompts, greedy)) == 0.5


def test_deterministic_under_the_seed(built, tmp_path):
    again = build_task(tmp_path / "again", seed=3, **SMALL)
    for name in ("train", "validation", "test"):
        assert again.split(name).read_text() == built.split(name).read_text()
    first, second = _state(built), _state(again)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = build_task(tmp_path / "other", seed=4, **SMALL)
    assert other.train.read_text() != built.train.read_text()


def test_cached_call_does_not_rewrite(built):
    before = _mtimes(built)
    assert build_task(built.root, seed=3, **SMALL) == built
    assert _mtimes(built) == before


def test_rebuilds_missing_or_changed_files(tmp_path):
    files = build_task(tmp_path / "t", seed=5, **SMALL)
    test_text, weights = files.test.read_text(), _state(files)
    sft_mtime = (files.sft / "model.safetensors").stat().st_mtime_ns

    files.test.unlink()  # a lost split is rewritten identically, without retraining
    build_task(files.root, seed=5, **SMALL)
    assert files.test.read_text() == test_text
    assert (files.sft / "model.safetensors").stat().st_mtime_ns == sft_mtime

    files.validation.write_text("corrupted\n")  # an edited split is restored too
    build_task(files.root, seed=5, **SMALL)
    assert len(read_split(files.validation)) == 8

    (files.sft / "model.safetensors").unlink()  # an incomplete model is retrained, identically
    build_task(files.root, seed=5, **SMALL)
    state = _state(files)
    assert all(torch.equal(state[k], weights[k]) for k in weights)

    train_mtime = files.train.stat().st_mtime_ns  # new SFT parameters retrain, data untouched
    build_task(files.root, seed=5, **{**SMALL, "sft_steps": 5})
    assert json.loads(files.manifest.read_text())["sft"]["steps"] == 5
    assert files.train.stat().st_mtime_ns == train_mtime
    assert not all(torch.equal(a, b) for a, b in zip(_state(files).values(), weights.values()))


def test_interrupted_build_is_rebuilt(tmp_path):
    files = build_task(tmp_path / "t", seed=6, **SMALL)
    files.manifest.unlink()  # as if the build stopped before the manifest was written
    build_task(files.root, seed=6, **SMALL)
    assert files.manifest.exists() and len(read_split(files.train)) == 96
