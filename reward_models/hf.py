"""Shared helpers of the Hugging Face-backed leaves (learned RM, judge). Local paths only: no hub."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

# The one dtype map of the project (the policy's `torch_dtype` reads it too); short aliases included.
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
Dtype = Literal["float32", "bfloat16", "float16"]
"""The dtypes a reward model's weights load in (``DTYPES`` also maps the short aliases)."""


def check_local_dir(path: str, owner: str) -> str:
    """``path`` if it is a local model directory, else a clear error (no hub downloads here)."""
    p = Path(path).expanduser()
    if not p.is_dir() or not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"{owner}: {path!r} is not a local model directory with a config.json "
            "(set init_args.path to a directory saved with save_pretrained)"
        )
    return str(p)


def resolve_dtype(dtype: str, owner: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"{owner}: dtype must be one of {list(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def load_tokenizer(path: str, padding_side: str, truncation_side: str = "left") -> Any:
    """The model's own tokenizer; a missing pad token falls back to EOS."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"tokenizer at {path!r} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    tok.padding_side, tok.truncation_side = padding_side, truncation_side
    return tok


def freeze(model: Any) -> Any:
    """eval mode, no gradients: a reward model is never trained by the policy's optimizer."""
    model.eval()
    model.requires_grad_(False)
    return model


def chat_text(tok: Any, messages: list[dict[str, str]], use_template: bool, add_generation_prompt: bool) -> str:
    """Render ``messages`` with the tokenizer's chat template when it has one (and ``use_template``);
    otherwise concatenate the contents."""
    if use_template and getattr(tok, "chat_template", None):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return "".join(m["content"] for m in messages)
