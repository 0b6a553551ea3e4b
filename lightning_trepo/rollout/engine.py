"""The shared rollout path's generator: one engine fulfils every algorithm's :class:`RolloutPlan`.

An algorithm never calls ``generate`` itself. It declares what it needs (samples per prompt,
sampling settings, a greedy baseline per prompt, continuations from prefixes; :mod:`lightning_trepo.rollout.plan`)
and the engine produces it in as few batched ``generate`` calls as memory allows.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from lightning_trepo.rollout.decoding import (
    DECODERS,
    Decoder,
    decode_chunk,
    decode_shared_prefix,
    generation_config,
    native_decode,
    pad_to_buckets,
    prefill_shared_prefix,
    static_cache_unsupported,
)
from lightning_trepo.rollout.plan import ContinuationPlan, Generated, RolloutPlan, SamplingConfig
from lightning_trepo.types import Rollout

# the plan types live in rollout/plan.py; this module re-exports them for the old import paths
__all__ = ["ContinuationPlan", "Generated", "RolloutEngine", "RolloutPlan", "RowBudget", "SamplingConfig",
           "completion_mask_from_eos", "left_pad", "right_pad", "within_budget"]


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Left-pad token lists into (N, P) ids and mask."""
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def right_pad(seqs: Sequence[Tensor], pad_id: int) -> Tensor:
    """Right-pad 1-D tensors into (N, L)."""
    width = max((s.numel() for s in seqs), default=0)
    out = torch.full((len(seqs), max(width, 1)), pad_id, dtype=torch.long, device=seqs[0].device if seqs else None)
    for i, s in enumerate(seqs):
        out[i, : s.numel()] = s
    return out


def completion_mask_from_eos(completion_ids: Tensor, eos_ids: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Mask = 1 up to and including the first EOS; truncated = no EOS at all. (N, L) -> (N, L), (N,)."""
    is_eos = torch.zeros_like(completion_ids, dtype=torch.bool)
    for eos in eos_ids:
        is_eos |= completion_ids == eos
    # number of EOS tokens strictly before each position; a position is real while that is 0
    before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    mask = (before == 0).long()
    truncated = ~is_eos.any(dim=1)
    return mask, truncated


def within_budget(mask: Tensor, truncated: Tensor, budget: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Mask and truncation of rows that may keep only their first ``budget[i]`` tokens: mask 0 from column
    ``budget[i]`` on, and a row that had not ended within its budget is truncated. (N, L), (N,), (N,) -> same."""
    keep = torch.arange(width, device=mask.device)[None, :] < budget[:, None]
    ended = (mask.sum(-1) <= budget) & ~truncated
    return mask * keep.to(mask.dtype), ~ended


class RowBudget:
    """A ``generate`` stopping criterion: row i stops once it has ``budget[i]`` new tokens (prompt width ``start``)."""

    def __init__(self, start: int, budget: Tensor) -> None:
        self.start, self.budget = start, budget

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs: Any) -> Tensor:
        return (input_ids.shape[1] - self.start) >= self.budget.to(input_ids.device)


class RolloutEngine:
    """Fulfils rollout plans with Hugging Face ``generate`` (KV cache, left-padded batches)."""

    def __init__(self, tokenizer: Any, max_batch_size: int = 256, synced_gpus: bool = False,
                 decoder: Decoder = "auto", bucket_tokens: int = 64) -> None:
        if decoder not in DECODERS:
            raise ValueError(f"rollout.decoder {decoder!r} is not one of {DECODERS}")
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.synced_gpus = synced_gpus
        self.decoder = decoder
        self.bucket_tokens = bucket_tokens
        self.static_allowed = True  # the module turns it off while parameters are sharded or gathered per rollout
        self.static_failure: str | None = None
        self.native_failure: str | None = None
        eos = tokenizer.eos_token_id
        self.eos_ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.generate_calls = 0
        self.generated_tokens = 0

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, model: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, sampling: SamplingConfig,
                 num_return: int = 1, greedy: bool = False, share_prefix: bool = False,
                 row_budget: Tensor | None = None) -> Generated:
        """Sample ``num_return`` completions per row, in chunks of ``max_batch_size`` rows; ``greedy`` decodes the
        argmax instead, within the same ``sampling.max_new_tokens`` budget. ``share_prefix``: run each row's prefill
        once and decode its ``num_return`` rows from that KV cache (eager decoding; the static path and sharded
        generation expand rows before the prefill). ``row_budget`` (R,): each input row's own token budget (at most
        ``sampling.max_new_tokens``); its rows stop there, a row cut by its budget counts as truncated, and only the
        tokens kept are counted in ``generated_tokens``. Returns completions in row-major order (row i's samples
        contiguous)."""
        expand = num_return if share_prefix and num_return > 1 and prompt_ids.shape[1] > 1 and not self.synced_gpus \
            and not self._use_static(model, prompt_ids) else 1
        ids = prompt_ids.repeat_interleave(num_return // expand, dim=0)
        mask = prompt_mask.repeat_interleave(num_return // expand, dim=0)
        budget = None if row_budget is None else \
            row_budget.to(ids.device).long().clamp(1, sampling.max_new_tokens).repeat_interleave(num_return // expand)
        step = max(1, self.max_batch_size // expand)
        chunks: list[Tensor] = []
        calls = 0
        was_training = model.training
        missing = self._missing_calls(-(-ids.shape[0] // step), ids.device)
        model.eval()
        try:
            for start in range(0, ids.shape[0], step):
                part = None if budget is None else budget[start:start + step]
                chunk = self._generate_chunk(model, ids[start:start + step], mask[start:start + step], sampling,
                                             greedy, expand, part)
                chunks.extend(chunk.unbind(0))
                calls += 1
            for _ in range(missing):  # keep joining the other ranks' collectives; the output is discarded
                one = torch.full((1, 1), self.pad_id, dtype=torch.long, device=ids.device)
                self._generate_chunk(model, one, torch.ones_like(one), sampling, greedy)
        finally:
            model.train(was_training)
        completion_ids = right_pad(chunks, self.pad_id)
        completion_mask, truncated = completion_mask_from_eos(completion_ids, self.eos_ids)
        if budget is not None:
            completion_mask, truncated = within_budget(completion_mask, truncated,
                                                       budget.repeat_interleave(expand), completion_ids.shape[1])
        completion_ids = completion_ids.masked_fill(~completion_mask.bool(), self.pad_id)
        self.generate_calls += calls
        self.generated_tokens += int(completion_mask.sum())
        return Generated(completion_ids, completion_mask, truncated, calls)

    def _missing_calls(self, local_calls: int, device: torch.device) -> int:
        """Under ``synced_gpus`` every rank must make as many generate calls as the busiest one (a rank with fewer
        rows, e.g. fewer TRePO continuations, would otherwise leave the others waiting in an all-gather)."""
        dist = torch.distributed
        if not (self.synced_gpus and dist.is_available() and dist.is_initialized()):
            return 0
        most = torch.tensor([local_calls], dtype=torch.long, device=device)
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        return int(most.item()) - local_calls

    def _generate_chunk(self, model: nn.Module, ids: Tensor, mask: Tensor, sampling: SamplingConfig,
                        greedy: bool, expand: int = 1, budget: Tensor | None = None) -> Tensor:
        if budget is not None:  # decode no further than the chunk's longest row budget
            sampling = replace(sampling, max_new_tokens=int(budget.max()))
            budget = budget.repeat_interleave(expand)
        config = generation_config(sampling, greedy, self.pad_id, self.eos_ids)
        stop = None if budget is None else RowBudget(ids.shape[1], budget)
        if self._use_native(model, ids):
            def native() -> Tensor:
                cache, run_ids, run_mask = prefill_shared_prefix(model, ids, mask, expand) if expand > 1 \
                    else (None, ids, mask)
                return native_decode(model, run_ids, run_mask, sampling, greedy, self.pad_id, self.eos_ids, cache,
                                     budget)

            out = self._fast_path("native", "the native decode loop", native)
            if out is not None:
                return out
        if expand > 1:
            return decode_shared_prefix(model, ids, mask, config, expand, stop)
        if self._use_static(model, ids) and stop is None:
            out = self._fast_path("static", "static-cache decoding",
                                  lambda: self._generate_static(model, ids, mask, sampling, greedy))
            if out is not None:
                return out
        return decode_chunk(model, ids, mask, config, self.synced_gpus, stop)

    def _fast_path(self, kind: str, label: str, decode: Callable[[], Tensor]) -> Tensor | None:
        """Run a fast decoder. Forced (``rollout.decoder`` = ``kind``) it never hides a failure; under ``auto`` a
        failure warns once, is kept in ``<kind>_failure`` (which turns that path off) and returns None so the caller
        decodes with ``generate``."""
        try:
            return decode()
        except Exception as err:  # noqa: BLE001 - any failure of a fast path falls back to generate under auto
            if self.decoder == kind:
                raise
            failure = f"{type(err).__name__}: {err}"
            setattr(self, f"{kind}_failure", failure)
            warnings.warn(f"rollout.decoder=auto: {label} failed ({failure}); decoding with generate from now on",
                          RuntimeWarning, stacklevel=3)
            return None

    def _use_native(self, model: nn.Module, ids: Tensor) -> bool:
        """``native``: always. ``auto``: on the CPU for an unsharded Hugging Face causal LM, until it fails once."""
        if self.decoder == "native":
            return True
        if self.decoder != "auto" or self.synced_gpus or self.native_failure is not None or ids.device.type != "cpu":
            return False
        base = getattr(model, "get_base_model", lambda: model)()
        return hasattr(base, "generate") and not getattr(getattr(base, "config", None), "is_encoder_decoder", True)

    def _use_static(self, model: nn.Module, ids: Tensor) -> bool:
        """``static``: always (the CPU too, uncompiled). ``auto``: on CUDA, unless parameters are sharded (their
        gathered storage changes every rollout), the model cannot, or the fast path failed once."""
        if self.decoder in ("eager", "native") or self.synced_gpus or self.static_failure is not None:
            return False
        if self.decoder == "static":
            return True
        return ids.device.type == "cuda" and self.static_allowed and static_cache_unsupported(model) is None

    def _generate_static(self, model: nn.Module, ids: Tensor, mask: Tensor, sampling: SamplingConfig,
                         greedy: bool) -> Tensor:
        rows = ids.shape[0]
        ids, mask = pad_to_buckets(ids, mask, self.pad_id, sampling.max_new_tokens, self.bucket_tokens)
        config = generation_config(sampling, greedy, self.pad_id, self.eos_ids, static=True,
                                   compile=ids.device.type == "cuda")
        return decode_chunk(model, ids, mask, config)[:rows]

    # ------------------------------------------------------------------ plans
    def rollout(self, model: nn.Module, plan: RolloutPlan, prompts: list[str], prompt_ids: list[list[int]],
                metadata: list[dict[str, Any]], device: torch.device) -> Rollout:
        """Sample ``plan.group_size`` completions for each of B prompts: one batched generate call
        (more only when N exceeds ``max_batch_size``). A greedy baseline, if planned, goes in
        ``rollout.greedy`` as a Rollout of B rows; the seconds spent in ``rollout.timings['generate']``."""
        g = plan.group_size
        p_ids, p_mask = left_pad(prompt_ids, self.pad_id, device)
        t0 = time.perf_counter()
        gen = self.generate(model, p_ids, p_mask, plan.sampling, num_return=g, greedy=plan.greedy)
        rollout = self._as_rollout(gen, p_ids, p_mask, prompts, metadata, g)
        if plan.greedy_baseline:  # the greedy response within the samples' own length budget
            greedy = self.generate(model, p_ids, p_mask, plan.sampling, num_return=1, greedy=True)
            rollout.greedy = self._as_rollout(greedy, p_ids, p_mask, prompts, metadata, 1)
        rollout.timings["generate"] = time.perf_counter() - t0
        return rollout

    def _as_rollout(self, gen: Generated, p_ids: Tensor, p_mask: Tensor, prompts: list[str],
                    metadata: list[dict[str, Any]], g: int) -> Rollout:
        completions = self.tokenizer.batch_decode(gen.completion_ids, skip_special_tokens=True)
        n_prompts = p_ids.shape[0]
        return Rollout(
            prompt_ids=p_ids.repeat_interleave(g, dim=0), prompt_mask=p_mask.repeat_interleave(g, dim=0),
            completion_ids=gen.completion_ids, completion_mask=gen.completion_mask,
            group_index=torch.arange(n_prompts, device=p_ids.device).repeat_interleave(g), group_size=g,
            prompts=[p for p in prompts for _ in range(g)], completions=completions,
            metadata=[m for m in metadata for _ in range(g)], truncated=gen.truncated,
        )

    def continue_from(self, model: nn.Module, prefix_ids: list[list[int]], num_return: int,
                      sampling: SamplingConfig, budgets: Tensor | None = None) -> Generated:
        """Sample ``num_return`` continuations of each token prefix in one batched pass (each prefix prefilled once),
        prefix i's continuations within ``budgets[i]`` new tokens (default: ``sampling.max_new_tokens``)."""
        device = next(model.parameters()).device
        ids, mask = left_pad(prefix_ids, self.pad_id, device)
        return self.generate(model, ids, mask, sampling, num_return, share_prefix=True, row_budget=budgets)
