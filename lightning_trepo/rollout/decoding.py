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

``native`` is this project's own KV-cache loop (:func:`native_decode`): one forward per token and a sampler
that draws by inverse CDF (a cumulative sum and a binary search) instead of ``torch.multinomial``, which on
the CPU costs ~28 ms per step over a 49k vocabulary at 32 rows, a fifth of a SmolLM2-135M decode step. Same
distribution as ``generate`` (the same temperature / top-k / top-p filters, EOS never sampled before
``min_new_tokens``), another random stream; greedy decoding gives ``generate``'s tokens exactly (tested).
"""
from __future__ import annotations

import inspect
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_trepo.ops import mask_positions

Decoder = Literal["auto", "eager", "static", "native"]
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


def stopping(stop: Any) -> dict[str, Any]:
    """``generate`` keyword arguments for an extra per-row stopping criterion (e.g. the engine's RowBudget)."""
    if stop is None:
        return {}
    from transformers import StoppingCriteriaList

    return {"stopping_criteria": StoppingCriteriaList([stop])}


def decode_chunk(model: nn.Module, ids: Tensor, mask: Tensor, config: Any, synced_gpus: bool = False,
                 stop: Any = None) -> Tensor:
    """``generate`` on (N, P) left-padded prompts; returns the (N, new) completion tokens."""
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config, synced_gpus=synced_gpus,
                         **stopping(stop))
    return out[:, ids.shape[1]:]


def cache_argument(model: nn.Module) -> str:
    """The keyword a causal LM takes its KV cache by (``cache`` in recent transformers, ``past_key_values`` before)."""
    base = getattr(model, "get_base_model", lambda: model)()
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def prefill_cache(model: Any, ids: Tensor, mask: Tensor, cache_kw: str) -> Any | None:
    """ONE forward of (R, P) left-padded prefixes minus their last token (positions follow the mask; only the last
    position's logits are computed): the KV cache of their first P - 1 columns, as the model hands it back under
    ``cache_kw`` (:func:`cache_argument`), or None when it hands back none. Autograd flows through it. The shared
    first half of :func:`prefill_shared_prefix` (decoding) and ``logprobs.prompt_prefix_cache`` (the loss pass)."""
    head_ids, head_mask = ids[:, :-1], mask[:, :-1].long()
    out = model(input_ids=head_ids, attention_mask=head_mask, position_ids=mask_positions(head_mask), use_cache=True,
                logits_to_keep=1)
    return getattr(out, cache_kw, None)


def prefill_shared_prefix(model: nn.Module, ids: Tensor, mask: Tensor, repeats: int) -> tuple[Any, Tensor, Tensor]:
    """ONE prefill of each (R, P) left-padded prefix minus its last token (:func:`prefill_cache`), its KV cache
    repeated row-wise for ``repeats`` continuations each; returns the cache and the (R * repeats, P) ids and mask to
    decode from."""
    name = cache_argument(model)
    cache = prefill_cache(model, ids, mask, name)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        raise RuntimeError(f"{type(model).__name__} returned no repeatable KV cache under {name!r}")
    cache.batch_repeat_interleave(repeats)
    return cache, ids.repeat_interleave(repeats, dim=0), mask.repeat_interleave(repeats, dim=0)


def decode_shared_prefix(model: nn.Module, ids: Tensor, mask: Tensor, config: Any, repeats: int,
                         stop: Any = None) -> Tensor:
    """``repeats`` completions of each of the (R, P) left-padded prefixes from ONE prefill per prefix
    (:func:`prefill_shared_prefix`); ``generate`` continues from the cache (it runs only the uncached last token).
    Returns (R * repeats, new) tokens, row i's completions contiguous, drawn in the same order as when the rows are
    repeated before the prefill."""
    cache, full_ids, full_mask = prefill_shared_prefix(model, ids, mask, repeats)
    out = model.generate(input_ids=full_ids, attention_mask=full_mask, generation_config=config,
                         **{cache_argument(model): cache}, **stopping(stop))
    return out[:, full_ids.shape[1]:]


def filter_logits(logits: Tensor, temperature: float, top_k: int, top_p: float) -> Tensor:
    """``generate``'s sampling warpers in its order: logits / T, then top-k (ties at the k-th value kept), then
    top-p (drop the low tail whose mass is at most 1 - p, always keeping the most likely token). (N, V) -> (N, V)
    with -inf where filtered."""
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    if top_p < 1.0:
        ascending, order = torch.sort(logits, dim=-1)
        drop = ascending.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[..., -1] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), -float("inf"))
    return logits


def sample_inverse_cdf(logits: Tensor) -> Tensor:
    """One token per row from softmax(logits): the first index whose cumulative probability exceeds u ~ U[0, 1)
    times the total (float64 sums, so rounding never shifts mass between tokens). (N, V) -> (N,)."""
    probs = (logits - logits.amax(-1, keepdim=True)).exp().double()
    cdf = probs.cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, dtype=torch.float64, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=logits.shape[-1] - 1)


def native_decode(model: nn.Module, ids: Tensor, mask: Tensor, sampling: Any, greedy: bool, pad_id: int,
                  eos_ids: list[int], cache: Any = None, budget: Tensor | None = None) -> Tensor:
    """Decode (N, P) left-padded prompts with a KV cache, one forward per new token; returns (N, new) tokens, pad
    after a row's EOS, stopping early once every row has ended (``sampling.stop_at_eos``). ``cache``: a KV cache
    already holding the first ``cache.get_seq_length()`` positions of ``ids`` (shared-prefix continuations).

    Rows that have ended leave the batch (their cache rows too) once they are an eighth of it, so one long response
    no longer makes every finished row pay a forward per token. Each row's tokens are drawn as before: greedy
    tokens are identical, and sampled ones follow the same law (one uniform per live row and step).
    ``budget`` (N,): row i ends after its own ``budget[i]`` tokens (pad after) and leaves the batch like an ended
    row."""
    from transformers import DynamicCache

    name = cache_argument(model)
    cache = cache if cache is not None else DynamicCache()
    stops = sampling.stop_at_eos or budget is not None  # rows can end before the budget of the call
    can_drop = stops and hasattr(cache, "batch_select_indices")
    positions = mask_positions(mask)
    start = cache.get_seq_length()
    feed, feed_pos = ids[:, start:], positions[:, start:]
    eos = torch.tensor(eos_ids, device=ids.device)
    live = torch.arange(ids.shape[0], device=ids.device)  # which original row each batch row is
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    out = torch.full((ids.shape[0], sampling.max_new_tokens), pad_id, dtype=ids.dtype, device=ids.device)
    steps = 0
    for step in range(sampling.max_new_tokens):
        logits = model(input_ids=feed, attention_mask=mask, position_ids=feed_pos, use_cache=True, logits_to_keep=1,
                       **{name: cache}).logits[:, -1].float()
        if not sampling.stop_at_eos:  # generate's min_new_tokens = budget: EOS is never sampled
            logits[:, eos] = -float("inf")
        if greedy:
            token = logits.argmax(-1)
        else:
            token = sample_inverse_cdf(filter_logits(logits, sampling.temperature, sampling.top_k, sampling.top_p))
        token = token.masked_fill(done, pad_id)
        out[live, step] = token
        steps = step + 1
        done |= torch.isin(token, eos)
        if budget is not None:
            done |= budget[live] <= step + 1
        if (stops and bool(done.all())) or step + 1 == sampling.max_new_tokens:
            break
        feed, feed_pos = token[:, None], feed_pos[:, -1:] + 1
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        if can_drop and int(done.sum()) >= max(1, done.shape[0] // 8):
            keep = (~done).nonzero(as_tuple=True)[0]
            cache.batch_select_indices(keep)
            live, done, feed, feed_pos, mask = live[keep], done[keep], feed[keep], feed_pos[keep], mask[keep]
    return out[:, :steps]
