"""How one chunk of rows is decoded: Hugging Face ``generate``, eager or with a static KV cache.

``eager`` is plain ``generate`` with a dynamic cache: it runs everywhere but pays Python and kernel-launch
overhead on every token. ``static`` preallocates the KV cache (transformers' ``StaticCache``); on CUDA,
``generate`` then compiles the decode step (``torch.compile``, mode ``reduce-overhead``: the step is
replayed as a CUDA graph). A compiled step is specialised to its shapes, so the static path pads every
call to a few buckets: rows to a power of two (multiples of 64 above 64), prompt + budget to a multiple
of ``bucket_tokens`` (by extra left padding, which the attention mask hides). Steps of a run then reuse a
handful of compiled graphs instead of recompiling, and the allocator sees a few fixed shapes.

The compiled graph reads the policy's parameters in place, so it always decodes with the weights the
optimizer just updated. Sampling semantics are ``generate``'s own in both paths (temperature, top-k, top-p,
EOS handling, ``stop_at_eos``): on the CPU, where nothing is compiled, both paths draw the same tokens for
a fixed seed when no bucket padding is needed (tested).
"""
from __future__ import annotations

import inspect
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Decoder = Literal["auto", "eager", "static"]
DECODERS: tuple[str, ...] = get_args(Decoder)


def generation_config(sampling: Any, greedy: bool, pad_id: int, eos_ids: list[int], static: bool = False,
                      compile: bool = False) -> Any:
    """The ``GenerationConfig`` of one call: ``sampling`` (a SamplingConfig) gives the budget and ``stop_at_eos``;
    ``greedy`` decodes the argmax within that budget; ``static`` preallocates the KV cache; ``compile`` (CUDA)
    compiles the decode step."""
    from transformers import GenerationConfig

    extra: dict[str, Any] = {}
    if static:
        extra["cache_implementation"] = "static"
    if compile:
        from transformers import CompileConfig

        extra["compile_config"] = CompileConfig(dynamic=False, mode="reduce-overhead")
    else:
        extra["disable_compile"] = True
    return GenerationConfig(
        do_sample=not greedy, temperature=None if greedy else sampling.temperature,
        top_p=None if greedy else sampling.top_p, top_k=None if greedy else sampling.top_k,
        max_new_tokens=sampling.max_new_tokens,
        min_new_tokens=sampling.max_new_tokens if not sampling.stop_at_eos else None,
        pad_token_id=pad_id, eos_token_id=eos_ids, use_cache=True, **extra,
    )


def row_bucket(rows: int) -> int:
    """Smallest bucket holding ``rows``: powers of two up to 64, then multiples of 64. 5 -> 8, 64 -> 64, 65 -> 128."""
    if rows <= 64:
        return 1 << max(rows - 1, 0).bit_length()
    return -(-rows // 64) * 64


def pad_to_buckets(ids: Tensor, mask: Tensor, pad_id: int, new_tokens: int,
                   bucket_tokens: int) -> tuple[Tensor, Tensor]:
    """Left-pad (N, P) prompts so that P + ``new_tokens`` is a multiple of ``bucket_tokens``, and append copies of
    row 0 up to :func:`row_bucket` rows. The caller keeps the first N rows of the output."""
    width = ids.shape[1]
    extra = -(width + new_tokens) % max(bucket_tokens, 1)
    if extra:
        ids = F.pad(ids, (extra, 0), value=pad_id)
        mask = F.pad(mask, (extra, 0), value=0)
    missing = row_bucket(ids.shape[0]) - ids.shape[0]
    if missing:
        ids = torch.cat([ids, ids[:1].expand(missing, -1)])
        mask = torch.cat([mask, mask[:1].expand(missing, -1)])
    return ids, mask


def static_cache_unsupported(model: nn.Module) -> str | None:
    """Why ``model`` should not decode through a compiled static cache (None when it can): transformers marks the
    architectures that compile with a static cache by ``_can_compile_fullgraph``."""
    base = getattr(model, "get_base_model", lambda: model)()
    if not hasattr(base, "generate") or not hasattr(base, "config"):
        return f"{type(base).__name__} is not a Hugging Face generation model"
    if getattr(base.config, "is_encoder_decoder", False):
        return "encoder-decoder models are decoded eagerly"
    if not getattr(base, "_can_compile_fullgraph", False):
        return f"{type(base).__name__} is not marked as compilable with a static cache by transformers"
    return None


def decode_chunk(model: nn.Module, ids: Tensor, mask: Tensor, config: Any, synced_gpus: bool = False) -> Tensor:
    """``generate`` on (N, P) left-padded prompts; returns the (N, new) completion tokens."""
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config, synced_gpus=synced_gpus)
    return out[:, ids.shape[1]:]


def cache_argument(model: nn.Module) -> str:
    """The keyword a causal LM takes its KV cache by (``cache`` in recent transformers, ``past_key_values`` before)."""
    base = getattr(model, "get_base_model", lambda: model)()
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def decode_shared_prefix(model: nn.Module, ids: Tensor, mask: Tensor, config: Any, repeats: int) -> Tensor:
    """``repeats`` completions of each of the (R, P) left-padded prefixes from ONE prefill per prefix: the prefix
    minus its last token fills a KV cache for R rows, the cache is repeated row-wise, and ``generate`` continues
    from it (it runs only the uncached last token). Returns (R * repeats, new) tokens, row i's completions
    contiguous, drawn in the same order as when the rows are repeated before the prefill."""
    name = cache_argument(model)
    head_ids, head_mask = ids[:, :-1], mask[:, :-1]
    position_ids = (head_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=head_ids, attention_mask=head_mask, position_ids=position_ids, use_cache=True,
                logits_to_keep=1)
    cache = getattr(out, name, None)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        raise RuntimeError(f"{type(model).__name__} returned no repeatable KV cache under {name!r}")
    cache.batch_repeat_interleave(repeats)
    full_ids, full_mask = ids.repeat_interleave(repeats, dim=0), mask.repeat_interleave(repeats, dim=0)
    out = model.generate(input_ids=full_ids, attention_mask=full_mask, generation_config=config, **{name: cache})
    return out[:, full_ids.shape[1]:]
