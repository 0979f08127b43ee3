"""Tiny local models, tokenizers and data for tests: built here, saved with save_pretrained, loaded back."""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ["good", "bad", "red", "blue", "cat", "dog", "sun", "moon", "tree", "rock", "say", ":"]
SPECIALS = ["<pad>", "<eos>", "<unk>"]


def make_tokenizer(with_pad: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    kwargs = dict(tokenizer_object=core, eos_token="<eos>", unk_token="<unk>", model_max_length=64)
    if with_pad:
        kwargs["pad_token"] = "<pad>"
    return PreTrainedTokenizerFast(**kwargs)


def make_model_dir(path: Path, seed: int = 0, with_pad: bool = True, tokenizer=None) -> Path:
    """A random-init 2-layer Llama with a word-level tokenizer (or the given one), written with save_pretrained."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer if tokenizer is not None else make_tokenizer(with_pad)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                         pad_token_id=0, eos_token_id=1, bos_token_id=None, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def make_reward_model_dir(path: Path, tokenizer=None, num_labels: int = 1) -> Path:
    """A random-init 2-layer Llama sequence classifier (a reward model, one output by default) with the
    word-level tokenizer (or the given one), written with save_pretrained."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = tokenizer if tokenizer is not None else make_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64, pad_token_id=0,
                         eos_token_id=1, bos_token_id=None, num_labels=num_labels)
    path.mkdir(parents=True, exist_ok=True)
    LlamaForSequenceClassification(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def make_prompt_files(root: Path, n_train: int = 64, n_test: int = 16) -> dict[str, Path]:
    """Prompts like ``say : cat dog`` with a reference response; jsonl train/validation/test."""
    rng = torch.Generator().manual_seed(0)
    nouns = WORDS[4:10]

    def rows(n: int) -> list[dict]:
        out = []
        for _ in range(n):
            idx = torch.randint(len(nouns), (2,), generator=rng).tolist()
            out.append({"prompt": f"say : {nouns[idx[0]]} {nouns[idx[1]]}", "reference": "good"})
        return out

    files = {}
    for split, n in {"train": n_train, "validation": n_test, "test": n_test}.items():
        files[split] = root / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(r) + "\n" for r in rows(n)))
    return files


def good_word_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """Share of response words that are ``good``: easy to learn, so a learning test is quick."""
    out = []
    for response in responses:
        words = response.split()
        out.append(sum(w == "good" for w in words) / max(len(words), 1) if words else 0.0)
    return out


FAULTY_REWARD = {"calls": 0, "from_call": 3, "value": float("nan")}


def faulty_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """``good_word_reward`` until call ``FAULTY_REWARD["from_call"]``, then ``FAULTY_REWARD["value"] × (1 + good
    word share)`` (NaN, infinite, or huge and varying): a reward source that breaks mid-run."""
    FAULTY_REWARD["calls"] += 1
    rewards = good_word_reward(prompts, responses)
    if FAULTY_REWARD["calls"] >= FAULTY_REWARD["from_call"]:
        return [FAULTY_REWARD["value"] * (1.0 + r) for r in rewards]
    return rewards


def answer_reward(prompts: list[str], responses: list[str], answer: list[str]) -> list[float]:
    """A verifiable reward: 1 when the response's first word is the row's ``answer`` column, else 0."""
    return [float(bool(response.split()) and response.split()[0] == expected)
            for response, expected in zip(responses, answer)]


def with_generation_config(model_dir: Path, target: Path, **settings) -> Path:
    """A copy of ``model_dir`` whose ``generation_config.json`` holds ``settings`` (e.g. a Qwen-Instruct-style
    ``repetition_penalty`` or a Llama-3-style list of ``eos_token_id``), as a checkpoint would ship it."""
    import shutil

    from transformers import GenerationConfig

    shutil.copytree(model_dir, target, dirs_exist_ok=True)
    GenerationConfig(**settings).save_pretrained(target)
    return target


def make_chat_tokenizer(end_of_turn: str = "<|im_end|>", bos: str | None = "<s>"):
    """A word-level tokenizer with a chat template in the style of a model family: ChatML (``<|im_end|>``),
    Gemma (``<end_of_turn>``) or Llama-3 (``<|eot_id|>``) ends each turn; ``bos`` is prepended to encodings."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = SPECIALS + ([bos] if bos else []) + ["<turn>", end_of_turn, "user", "assistant"]
    vocab = {token: i for i, token in enumerate(specials + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos:
        core.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    template = ("{{ bos_token }}{% for m in messages %}<turn> {{ m['role'] }} {{ m['content'] }} " + end_of_turn +
                " {% endfor %}{% if add_generation_prompt %}<turn> assistant {% endif %}")
    kwargs = dict(tokenizer_object=core, eos_token="<eos>", unk_token="<unk>", pad_token="<pad>", model_max_length=64,
                  chat_template=template)
    if bos:
        kwargs["bos_token"] = bos
    return PreTrainedTokenizerFast(**kwargs)


def fill_hub_cache(hf_home: Path, repo_id: str, source: Path, revision: str = "main", kind: str = "model") -> Path:
    """Put ``source`` (a ``save_pretrained`` directory, or a folder of data files for ``kind="dataset"``) into a
    Hugging Face cache under ``hf_home`` as the hub repository ``repo_id`` at ``revision``, as a download would;
    with ``HF_HUB_OFFLINE=1``, ``from_pretrained(repo_id)`` (or a data set id) then loads without any network."""
    import hashlib
    import shutil

    repo = hf_home / "hub" / (f"{kind}s--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    shutil.copytree(source, repo / "snapshots" / commit, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return repo
