"""The random models the GPU benchmarks train: built in code, saved once, loaded through ``policy.model_path``."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def save_random_qwen2(path: str | Path, tokenizer: Any, shape: dict[str, int], max_positions: int = 2048) -> int:
    """Save a randomly initialised (seed 0) Qwen2 causal LM of ``shape`` with ``tokenizer``'s vocabulary and special
    tokens, and the tokenizer, to ``path``; return the parameter count. A random model over a large vocabulary
    almost never samples EOS, so every completion runs the whole budget."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    config = Qwen2Config(vocab_size=len(tokenizer), max_position_embeddings=max_positions, tie_word_embeddings=True,
                         bos_token_id=bos, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         **shape)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())
