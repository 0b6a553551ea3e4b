"""A tiny character tokenizer for the data tests (independent of the project's own policy code)."""
from __future__ import annotations

import string

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

CHARS = [c for c in string.printable if c not in "\t\r\x0b\x0c"]  # printable ASCII incl. " " and "\n"
SPECIALS = ["<pad>", "<eos>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def make_char_tokenizer(chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """One token per character (ids 2..), ``<pad>`` = 0 and ``<eos>`` = 1; optionally a chat template."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


@pytest.fixture(scope="session")
def char_tokenizer() -> PreTrainedTokenizerFast:
    return make_char_tokenizer()


@pytest.fixture(scope="session")
def chat_tokenizer() -> PreTrainedTokenizerFast:
    return make_char_tokenizer(CHAT_TEMPLATE)
