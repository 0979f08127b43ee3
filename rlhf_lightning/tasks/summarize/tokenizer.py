"""A word-level tokenizer trained on the task corpus, wrapped for ``transformers``."""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from rlhf_lightning.tasks.summarize.corpus import FILLERS, NOUNS, PROMPT_PREFIX, PROMPT_SUFFIX

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"


def train_tokenizer(texts: Iterable[str], model_max_length: int) -> PreTrainedTokenizerFast:
    """WordLevel tokenizer over ``texts`` plus the whole task vocabulary (so no task word is unknown).

    Words and punctuation are separate tokens (``"post:"`` → ``post``, ``:``); there is no BOS,
    ``<pad>`` ≠ ``<eos>``, and decoding joins tokens with single spaces.
    """
    backend = Tokenizer(models.WordLevel(unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    vocabulary = " ".join([*NOUNS, *FILLERS, PROMPT_PREFIX, PROMPT_SUFFIX])
    trainer = trainers.WordLevelTrainer(special_tokens=[PAD, EOS, UNK], min_frequency=1, show_progress=False)
    backend.train_from_iterator([vocabulary, *texts], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
