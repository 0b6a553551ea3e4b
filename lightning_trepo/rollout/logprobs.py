"""Token log-probs straight from the final hidden states and the LM head, chunk by chunk.

The plain way, ``log_softmax(lm_head(h).float())[token]``, holds an (N, L, V) logits tensor, a full fp32
copy and an fp32 log-softmax kept for backward: with a 49k vocabulary that is most of an RL step's peak
memory. :class:`LinearTokenLogprob` instead computes, for C positions at a time,

    log π(w_t) = z[w_t] − logsumexp(z),   z = (h_t · Wᵀ + b) / T     (logits in the model's dtype, LSE in fp32)

and keeps only (N, L) results. Backward recomputes each chunk's logits and uses
∂ log π(w) / ∂z = onehot(w) − softmax(z), so it never holds more than one (C, V) chunk either. Entropy
H = LSE − Σ softmax(z)·z comes out of the same chunks, detached (it is a metric).

:func:`fused_head_logprobs` routes a causal LM's own forward through this op by standing in for its LM
head for one call, so every model wrapper (LoRA, FSDP2, DeepSpeed, PPO's hidden-state capture) keeps
working: the head's hooks still run, only its (N, L, V) output is never made.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_trepo.ops import entropy_from_logits, mask_positions, token_logprobs
from lightning_trepo.rollout.decoding import prefill_cache

CHUNK_BYTES = 1 << 28  # one chunk's fp32 logits on an accelerator: 256 MiB
# on the CPU: 24 MiB, below glibc's largest mmap threshold (32 MiB), so each chunk's buffers come back from the heap
# instead of being mapped and page-faulted afresh, and a chunk stays near the caches (measured on 2 EPYC cores,
# SmolLM2's 49k vocabulary: a head pass of 1,024 positions 471 ms in chunks of 128 against 519 ms in one chunk)
CPU_CHUNK_BYTES = 24 << 20
# config attributes of models that rescale or cap the head's logits after it (Gemma 2/3, Cohere, Granite)
POST_HEAD_ATTRS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def chunk_rows(vocab: int, budget_bytes: int = CHUNK_BYTES) -> int:
    """Positions per chunk so that one chunk's fp32 (C, V) logits stay within ``budget_bytes``."""
    return max(1, budget_bytes // (4 * max(vocab, 1)))


def _compute_dtype(hidden: Tensor, weight: Tensor) -> torch.dtype:
    kind = hidden.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return weight.dtype


def _scaled_logits(h: Tensor, w: Tensor, b: Tensor | None, temperature: float) -> Tensor:
    """fp32 (C, V) logits / T of one chunk, scaled in place (no second (C, V) buffer; none at all for T = 1)."""
    z = F.linear(h, w, b).float()
    return z if temperature == 1.0 else z.div_(temperature)


class LinearTokenLogprob(torch.autograd.Function):
    """(T, H) hidden, (V, H) weight, (V,) bias or None, (T,) targets -> (T,) fp32 log-probs and (T,) fp32 entropy."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, temperature: float,
                chunk: int, with_entropy: bool) -> tuple[Tensor, Tensor]:
        dtype = _compute_dtype(hidden, weight)
        logprobs = hidden.new_empty(hidden.shape[0], dtype=torch.float32)
        entropy = hidden.new_zeros(hidden.shape[0] if with_entropy else 0, dtype=torch.float32)
        w = weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk):
                z = _scaled_logits(hidden[start:start + chunk].to(dtype), w, b, temperature)
                lse = torch.logsumexp(z, dim=-1)
                tgt = targets[start:start + chunk]
                logprobs[start:start + chunk] = z.gather(-1, tgt[:, None]).squeeze(-1) - lse
                if with_entropy:
                    entropy[start:start + chunk] = lse - (torch.softmax(z, dim=-1) * z).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.dtype, ctx.temperature, ctx.chunk = dtype, temperature, chunk
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx: Any, grad_logprobs: Tensor, grad_entropy: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, targets = ctx.saved_tensors
        dtype, temperature, chunk = ctx.dtype, ctx.temperature, ctx.chunk
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        w = weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk):
                h = hidden[start:start + chunk].to(dtype)
                z = _scaled_logits(h, w, b, temperature)
                g = grad_logprobs[start:start + chunk].float()
                # d logp / d z = onehot(target) - softmax(z); d z / d logits = 1 / T
                grad_z = torch.softmax(z, dim=-1).mul_(-g[:, None])
                grad_z.scatter_add_(-1, targets[start:start + chunk, None], g[:, None])
                grad_logits = grad_z.div_(temperature)
                if need_h:
                    grad_h[start:start + chunk] = (grad_logits.to(dtype) @ w).to(hidden.dtype)
                if need_w:
                    grad_w.addmm_(grad_logits.t(), h.float())
                if need_b:
                    grad_b += grad_logits.sum(0)
        return (grad_h, grad_w.to(weight.dtype) if need_w else None, grad_b.to(bias.dtype) if need_b else None,
                None, None, None, None)


def linear_token_logprobs(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                          temperature: float = 1.0, chunk: int | None = None,
                          with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """log softmax((h·Wᵀ + b) / T)[target] for (..., H) hidden and (...) targets, never holding (..., V) at once.

    Returns fp32 log-probs of shape (...) and, if asked, the detached fp32 entropy of the same distributions.
    """
    lead = targets.shape
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    size = chunk or chunk_rows(weight.shape[0], CPU_CHUNK_BYTES if hidden.device.type == "cpu" else CHUNK_BYTES)
    logprobs, entropy = LinearTokenLogprob.apply(flat_h, weight, bias, targets.reshape(-1), float(temperature), size,
                                                 with_entropy)
    return logprobs.view(lead), entropy.view(lead) if with_entropy else None


def output_head(model: Any) -> nn.Module | None:
    """The LM head (an ``nn.Linear``) of a causal LM, through wrappers (LoRA's adapter-disabled view, offloading)."""
    seen = 0
    while model is not None and seen < 4:
        getter = getattr(model, "get_output_embeddings", None)
        if callable(getter):
            head = getter()
            return head if type(head) is nn.Linear else None
        model = getattr(model, "policy", None) or getattr(model, "module", None)
        seen += 1
    return None


def fused_head_supported(model: Any) -> nn.Module | None:
    """The head to stand in for, or None when the model post-processes its logits (the plain path is used)."""
    head = output_head(model)
    config = getattr(getattr(model, "config", None), "get_text_config", lambda: getattr(model, "config", None))()
    if head is None or any(getattr(config, a, None) not in (None, 1, 1.0) for a in POST_HEAD_ATTRS):
        return None
    return head


@contextmanager
def fused_head_logprobs(head: nn.Module, targets: Tensor, temperature: float, with_entropy: bool,
                        chunk: int | None = None) -> Iterator[dict[str, Tensor]]:
    """For one forward, ``head(h)`` with h (N, L+1, H) returns (N, L+1) log-probs of ``targets`` (N, L) (position i
    scores token i+1; the last column is 0) instead of (N, L+1, V) logits; entropy lands in the yielded dict."""
    out: dict[str, Tensor] = {}

    def forward(hidden: Tensor) -> Tensor:
        hidden = hidden[:, -targets.shape[1] - 1:]  # models that ignore logits_to_keep hand over every position
        lp, ent = linear_token_logprobs(hidden[:, :-1], head.weight, head.bias, targets, temperature, chunk,
                                        with_entropy)
        if ent is not None:
            out["entropy"] = ent
        return F.pad(lp, (0, 1))

    head.forward = forward  # an instance attribute: nn.Module.__call__ (and every hook around it) still runs
    try:
        yield out
    finally:
        del head.forward


def shared_prompt_groups(prompt_ids: Tensor, prompt_mask: Tensor) -> tuple[Tensor, Tensor] | None:
    """Rows whose left-padded prompt (ids and mask) is the same: ``(first, inverse)`` with ``first`` (R,) one row of
    each distinct prompt and ``inverse`` (N,) the group of every row, or None when no two rows share a prompt (or
    the prompt is a single token, which leaves no prefix to share)."""
    if prompt_ids.shape[0] < 2 or prompt_ids.shape[1] < 2:
        return None
    key = torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1)
    distinct, inverse = torch.unique(key, dim=0, return_inverse=True)
    if distinct.shape[0] == key.shape[0]:
        return None
    rows = torch.arange(key.shape[0], device=key.device)
    first = torch.full((distinct.shape[0],), key.shape[0], dtype=rows.dtype, device=key.device)
    return first.scatter_reduce_(0, inverse, rows, "amin"), inverse


def prompt_cache_supported(model: Any) -> bool:
    """Whether a log-prob pass may run each distinct prompt once and share its KV cache: a decoder-only causal LM
    that keeps a cache in training (gradient checkpointing would re-run layers in backward and append to it twice)."""
    base = getattr(model, "get_base_model", lambda: model)()
    config = getattr(base, "config", None)
    # transformers 5 names the flag is_activation_checkpointing (is_gradient_checkpointing is deprecated there)
    flag = "is_activation_checkpointing" if hasattr(type(base), "is_activation_checkpointing") \
        else "is_gradient_checkpointing"
    return config is not None and not getattr(config, "is_encoder_decoder", False) and not getattr(base, flag, False)


def prompt_prefix_cache(model: Any, prompt_ids: Tensor, prompt_mask: Tensor,
                        cache_kw: str) -> tuple[Any, int, str] | None:
    """ONE forward of each distinct prompt minus its last token (:func:`shared_prompt_groups`), its KV cache then
    gathered back to all N rows (autograd flows through the gather, so each prompt's backward also runs once).
    ``cache_kw``: the keyword the model takes and returns its cache by (``decoding.cache_argument``); the forward is
    ``decoding.prefill_cache``, the one decoding's shared-prefix prefill runs. Returns the
    ``prefix`` of :func:`completion_logits` (the cache, the prompt columns it holds, ``cache_kw``), or None when no
    rows share a prompt or the model hands back no cache that can be gathered."""
    groups = shared_prompt_groups(prompt_ids, prompt_mask)
    if groups is None:
        return None
    first, inverse = groups
    held = prompt_ids.shape[1] - 1
    cache = prefill_cache(model, prompt_ids[first], prompt_mask[first], cache_kw)
    if cache is None or not hasattr(cache, "batch_select_indices") or cache.get_seq_length() != held:
        return None
    cache.batch_select_indices(inverse)
    return cache, held, cache_kw


def completion_logits(model: Any, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                      completion_mask: Tensor, prefix: tuple[Any, int, str] | None = None) -> Tensor:
    """Logits (N, L, V) that predict each completion token given everything before it (inside
    :func:`fused_head_logprobs`: the (N, L) log-probs of the completion tokens themselves).

    Prompts are left padded and completions right padded; position ids follow the attention mask
    so a left-padded prompt sees the same positions as an unpadded one. ``prefix`` (a cache from
    :func:`prompt_prefix_cache`, the columns it holds and the model's cache keyword): only the columns after it run.
    """
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention = torch.cat([prompt_mask, completion_mask], dim=1).long()
    position_ids = mask_positions(attention)
    length = completion_ids.shape[1]
    if prefix is None:
        out = model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids,
                    logits_to_keep=length + 1, use_cache=False)
    else:
        cache, start, cache_kw = prefix
        out = model(input_ids=input_ids[:, start:], attention_mask=attention, position_ids=position_ids[:, start:],
                    use_cache=True, logits_to_keep=length + 1, **{cache_kw: cache})
    return out.logits[:, -length - 1:-1]


def length_buckets(lengths: Tensor, groups: Tensor, max_buckets: int, min_saving: float = 0.1) -> list[Tensor]:
    """Split rows into at most ``max_buckets`` sets of whole groups, each to be padded only to its own longest row.

    ``lengths`` (N,) completion lengths, ``groups`` (N,) a group id per row (rows sharing a prompt stay together, so
    each bucket still runs every prompt once). Groups sorted by their longest row are cut into contiguous buckets
    that minimise the padded tokens Σ_b rows_b · longest_b (dynamic programming); a split is kept only when it
    saves at least ``min_saving`` of the single pass's rows · longest. Returns row indices per bucket, longest
    first; one bucket holding every row when no split pays."""
    every = [torch.arange(lengths.shape[0], device=lengths.device)]
    if max_buckets < 2 or lengths.shape[0] < 2:
        return every
    ids, inverse = torch.unique(groups, return_inverse=True)
    longest = torch.zeros(ids.shape[0], dtype=lengths.dtype, device=lengths.device).scatter_reduce(
        0, inverse, lengths, "amax", include_self=False)
    order = torch.argsort(longest, descending=True, stable=True)
    size = torch.bincount(inverse, minlength=ids.shape[0])[order].tolist()
    top, n = longest[order].tolist(), int(ids.shape[0])
    # cost[k][j]: least padded tokens of the first j sorted groups in k buckets; cut[k][j]: where the last one starts
    inf = float("inf")
    cost = [[0.0] + [inf] * n for _ in range(max_buckets + 1)]
    cut = [[0] * (n + 1) for _ in range(max_buckets + 1)]
    for k in range(1, max_buckets + 1):
        for j in range(1, n + 1):
            rows = 0
            for i in range(j, 0, -1):  # the last bucket holds sorted groups i-1 .. j-1, its longest is top[i-1]
                rows += size[i - 1]
                c = cost[k - 1][i - 1] + rows * top[i - 1]
                if c < cost[k][j]:
                    cost[k][j], cut[k][j] = c, i - 1
    k = min(range(1, max_buckets + 1), key=lambda b: (cost[b][n], b))
    if cost[k][n] > (1 - min_saving) * cost[1][n]:
        return every
    bounds, j = [], n
    for level in range(k, 0, -1):
        bounds.append((cut[level][j], j))
        j = cut[level][j]
    sorted_groups = order.tolist()
    out = []
    for lo, hi in reversed(bounds):
        members = torch.tensor(sorted_groups[lo:hi], device=lengths.device)
        out.append(torch.isin(inverse, members).nonzero(as_tuple=True)[0])
    return [b for b in out if b.numel()]


def sequence_logprobs(model: Any, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                      completion_mask: Tensor, temperature: float = 1.0, with_entropy: bool = False,
                      head: nn.Module | None = None, prompt_cache_kw: str | None = None,
                      max_buckets: int = 1) -> tuple[Tensor, Tensor | None]:
    """Per-token log π(w_t | prefix) at the sampling temperature, (N, L), and optionally the (detached) entropy.

    When the model's LM head is a plain linear layer (``head``, found on ``model`` when not given), the log-probs
    come from the hidden states chunk by chunk (above): no (N, L, V) logits. ``prompt_cache_kw`` (the keyword the
    model takes its KV cache by; the caller checks :func:`prompt_cache_supported`): rows with the same prompt (a
    group's G samples) run it once (:func:`prompt_prefix_cache`). ``max_buckets`` > 1: the rows run in up to that
    many forwards of whole groups, each padded only to its own longest completion (:func:`length_buckets`), so one
    long response no longer makes every row pay for its length. Same values as the plain pass up to rounding.
    """
    buckets = row_buckets(prompt_ids, prompt_mask, completion_mask, max_buckets)
    if len(buckets) > 1:
        def one_bucket(*rows: Tensor) -> tuple[Tensor, Tensor | None]:
            return sequence_logprobs(model, *rows, temperature, with_entropy, head, prompt_cache_kw)

        logprobs, entropy = in_buckets(one_bucket, buckets, prompt_ids, prompt_mask, completion_ids, completion_mask)
        return logprobs, entropy
    head = head if head is not None else fused_head_supported(model)
    prefix = prompt_prefix_cache(model, prompt_ids, prompt_mask, prompt_cache_kw) if prompt_cache_kw else None
    if head is not None:
        with fused_head_logprobs(head, completion_ids, temperature, with_entropy) as extra:
            logprobs = completion_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask, prefix)
        return logprobs * completion_mask, extra.get("entropy")
    logits = completion_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask, prefix)
    logprobs = token_logprobs(logits, completion_ids, temperature) * completion_mask
    entropy = entropy_from_logits(logits.detach(), temperature) if with_entropy else None
    return logprobs, entropy


def row_buckets(prompt_ids: Tensor, prompt_mask: Tensor, completion_mask: Tensor, max_buckets: int) -> list[Tensor]:
    """The rows of a log-prob pass in up to ``max_buckets`` sets of whole groups (rows sharing a prompt,
    :func:`shared_prompt_groups`), by :func:`length_buckets`; one set of every row when splitting saves too little."""
    if max_buckets < 2:
        return [torch.arange(prompt_ids.shape[0], device=prompt_ids.device)]
    shared = shared_prompt_groups(prompt_ids, prompt_mask)
    groups = shared[1] if shared is not None else torch.arange(prompt_ids.shape[0], device=prompt_ids.device)
    return length_buckets(completion_mask.sum(dim=1), groups, max_buckets)


def in_buckets(fn: Callable[..., tuple[Tensor | None, ...]], buckets: list[Tensor], prompt_ids: Tensor,
               prompt_mask: Tensor, completion_ids: Tensor, completion_mask: Tensor) -> tuple[Tensor | None, ...]:
    """``fn(prompt_ids, prompt_mask, completion_ids, completion_mask)`` once per bucket of rows, its completions
    trimmed to the bucket's longest; each (rows, cols) tensor it returns is padded with 0 back to the full width and
    the buckets put back in row order (an output that is None in any bucket stays None)."""
    width = completion_ids.shape[1]
    outs = []
    for rows in buckets:
        cols = int(completion_mask[rows].sum(dim=1).max().clamp(min=1))
        part = fn(prompt_ids[rows], prompt_mask[rows], completion_ids[rows, :cols], completion_mask[rows, :cols])
        outs.append([None if t is None else F.pad(t, (0, width - t.shape[1])) for t in part])
    back = torch.argsort(torch.cat(buckets))  # bucket order -> row order
    return tuple(None if any(o[i] is None for o in outs) else torch.cat([o[i] for o in outs])[back]
                 for i in range(len(outs[0])))
