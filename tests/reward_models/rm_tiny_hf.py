"""Tiny local Hugging Face models with hand-set weights, built in code (no downloads)."""
from __future__ import annotations

from pathlib import Path

import torch

CHARS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;!?'\"()[]{}<>/\\-+=*_#|\n")
SPECIALS = ["[PAD]", "[UNK]", "[EOS]"]
VOCAB = {t: i for i, t in enumerate(SPECIALS + CHARS)}
EMBD = 4


def save_char_tokenizer(path: Path, chat_template: str | None = None) -> None:
    """A character-level tokenizer: every character is one token."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(path)


def _config(**kw):
    from transformers import GPT2Config

    return GPT2Config(vocab_size=len(VOCAB), n_positions=512, n_embd=EMBD, n_layer=1, n_head=1, pad_token_id=0,
                      eos_token_id=2, bos_token_id=2, **kw)


def _silence_blocks(model) -> None:
    """Attention and MLP add nothing, no position embedding: hidden(t) = wte[token t]."""
    with torch.no_grad():
        model.transformer.wpe.weight.zero_()
        for block in model.transformer.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()


def save_bang_rm(path: Path, chat_template: str | None = None) -> None:
    """Sequence classifier scoring 1/sqrt(0.5 + 1e-5) if the last token is '!', else 0.

    wte['!'] = [1, -1, 0, 0], other rows 0; LayerNorm([1, -1, 0, 0]) = [1, -1, 0, 0] / sqrt(0.5 + eps)
    (mean 0, variance 2/4); the score head reads coordinate 0.
    """
    from transformers import GPT2ForSequenceClassification

    model = GPT2ForSequenceClassification(_config(num_labels=1))
    _silence_blocks(model)
    with torch.no_grad():
        model.transformer.wte.weight.zero_()
        model.transformer.wte.weight[VOCAB["!"]] = torch.tensor([1.0, -1.0, 0.0, 0.0])
        model.transformer.ln_f.weight.fill_(1.0)
        model.transformer.ln_f.bias.zero_()
        model.score.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    model.save_pretrained(path)
    save_char_tokenizer(path, chat_template)


def save_parrot_lm(path: Path, token: str) -> None:
    """Causal LM whose greedy output is ``token`` repeated: ln_f maps every position to e0 and the
    (untied) LM head gives ``token`` logit 5, all others 0."""
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel(_config(tie_word_embeddings=False))
    _silence_blocks(model)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        model.lm_head.weight.zero_()
        model.lm_head.weight[VOCAB[token], 0] = 5.0
    model.save_pretrained(path)
    save_char_tokenizer(path)


def save_random_rm(path: Path) -> None:
    from transformers import GPT2ForSequenceClassification

    torch.manual_seed(0)
    GPT2ForSequenceClassification(_config(num_labels=2)).save_pretrained(path)
    save_char_tokenizer(path)
