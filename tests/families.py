"""Tiny random checkpoints of seven real model families, each with a byte-level BPE tokenizer trained
locally and its family's chat template (special tokens, BOS, end-of-turn), written with save_pretrained."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

CORPUS = ["say : good cat dog sun moon tree rock red blue bad", "user assistant system good good good",
          "the quick brown fox jumps over the lazy dog", "good cat good dog good sun"] * 8

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
GEMMA = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else "
         "m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
         "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
MISTRAL = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
           "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")
PHI3 = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@dataclass(frozen=True)
class Family:
    """How one model family's checkpoint looks: its config class, special tokens and chat template."""

    name: str
    config: str
    eos: str
    bos: Optional[str]
    pad: Optional[str]
    template: Optional[str]
    specials: tuple[str, ...]
    end_of_turn: Optional[str]  # the token a chat response ends with (None: the tokenizer's EOS)
    extra_eos: tuple[str, ...] = ()  # further EOS ids in generation_config.json (Llama-3 style)
    tied: bool = False


FAMILIES = {
    "gpt_neox": Family("gpt_neox", "GPTNeoXConfig", "<|endoftext|>", None, None, None, ("<|endoftext|>",), None),
    "llama3": Family("llama3", "LlamaConfig", "<|end_of_text|>", "<|begin_of_text|>", None, LLAMA3,
                     ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                      "<|eot_id|>"), "<|eot_id|>", extra_eos=("<|eot_id|>",)),
    "qwen2": Family("qwen2", "Qwen2Config", "<|im_end|>", None, "<|endoftext|>", CHATML,
                    ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), "<|im_end|>", tied=True),
    "gpt2": Family("gpt2", "GPT2Config", "<|endoftext|>", None, None, None, ("<|endoftext|>",), None, tied=True),
    "mistral": Family("mistral", "MistralConfig", "</s>", "<s>", None, MISTRAL, ("<s>", "</s>", "[INST]", "[/INST]"),
                      "</s>"),
    "gemma": Family("gemma", "GemmaConfig", "<eos>", "<bos>", "<pad>", GEMMA,
                    ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"), "<end_of_turn>", tied=True),
    "phi3": Family("phi3", "Phi3Config", "<|endoftext|>", None, "<|endoftext|>", PHI3,
                   ("<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"), "<|end|>"),
}


def family_tokenizer(family: Family):
    """A byte-level BPE tokenizer trained on a tiny corpus, with the family's special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=list(family.specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(CORPUS, trainer)
    if family.bos:
        core.post_processor = processors.TemplateProcessing(
            single=f"{family.bos} $A", special_tokens=[(family.bos, core.token_to_id(family.bos))])
    kwargs = dict(tokenizer_object=core, eos_token=family.eos, model_max_length=128)
    if family.bos:
        kwargs["bos_token"] = family.bos
    if family.pad:
        kwargs["pad_token"] = family.pad
    if family.template:
        kwargs["chat_template"] = family.template
    tokenizer = PreTrainedTokenizerFast(**kwargs)
    tokenizer.add_special_tokens({"additional_special_tokens": [t for t in family.specials
                                                                if t not in (family.eos, family.bos, family.pad)]})
    return tokenizer


def make_family_checkpoint(family: Family, path: Path, seed: int = 0) -> Path:
    """A random tiny model of ``family`` with its tokenizer, saved with ``save_pretrained``."""
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig

    tokenizer = family_tokenizer(family)
    sizes = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=128, tie_word_embeddings=family.tied)
    if family.config == "GPT2Config":
        sizes = dict(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=128,
                     tie_word_embeddings=True)
    if family.config in ("LlamaConfig", "Qwen2Config", "MistralConfig", "GemmaConfig", "Phi3Config"):
        sizes["num_key_value_heads"] = 2
    if family.config == "GemmaConfig":
        sizes["head_dim"] = 8
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in (family.eos, *family.extra_eos)]
    config = getattr(transformers, family.config)(**sizes, eos_token_id=eos_ids[0],
                                                  bos_token_id=tokenizer.bos_token_id,
                                                  pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    GenerationConfig(eos_token_id=eos_ids if len(eos_ids) > 1 else eos_ids[0],
                     bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id).save_pretrained(path)
    return path
