"""A character-level tokenizer for the arithmetic task (built from a fixed alphabet, no training), wrapped for
``transformers``."""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from rlhf_lightning.tasks.summarize.tokenizer import EOS, PAD, UNK

ALPHABET = "0123456789+= "


def build_tokenizer(model_max_length: int) -> PreTrainedTokenizerFast:
    """Every character is a token (``"57+68="`` → 6 tokens), unknown characters are ``<unk>``; no BOS,
    ``<pad>`` ≠ ``<eos>``, and decoding joins the tokens with nothing between them."""
    vocab = {token: i for i, token in enumerate([PAD, EOS, UNK, *ALPHABET])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   model_max_length=model_max_length, padding_side="right",
                                   clean_up_tokenization_spaces=False)
