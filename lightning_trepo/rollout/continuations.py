"""Monte Carlo continuations from response prefixes: the rollout side of TRePO.

For every valid anchor (sample n, position s) the engine samples K continuations of the prefix
``prompt + W_{0,s}`` with the behaviour policy, all anchors of a step in one batched pass (chunked
by ``max_batch_size``). Each continuation is given the SAME length budget as the original response
(``max_new_tokens - s``), so a continuation that runs out of budget is truncated exactly like an
original response would be and U(W_{0,s}) is estimated for the same finite-horizon problem.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_trepo.algorithms.anchors import anchor_positions_from_offsets, boundary_anchor_positions
from lightning_trepo.rollout.engine import ContinuationPlan, RolloutEngine, SamplingConfig, left_pad, right_pad
from lightning_trepo.types import Rollout
from reward_models import Samples


@dataclass
class Continuations:
    """K continuations for each requested (sample, anchor column) pair, as full responses W_{0,s} + W'."""

    sample_index: Tensor  # (C,) which rollout sample each continuation extends
    anchor_column: Tensor  # (C,) which column of anchor_positions (0 = empty prefix: a fresh sample)
    completion_ids: Tensor  # (C, L') prefix + continuation tokens, right padded
    completion_mask: Tensor  # (C, L')
    completions: list[str]  # (C,) decoded full responses
    generated_tokens: int  # continuation tokens actually generated (excluding prefixes)
    num_calls: int
    truncated: Tensor | None = None  # (C,) bool, the continuation ran out of its budget without EOS
    generated_lengths: Tensor | None = None  # (C,) tokens each continuation generated (after its prefix)
    metadata: list[dict[str, Any]] | None = None  # (C,) own rows (episode continuations); None = their sample's

    def to_samples(self, rollout: Rollout) -> Samples:
        """The reward layer's view: each continuation scored as a full response to its sample's prompt and row."""
        extended = replace(rollout.select(self.sample_index), completion_ids=self.completion_ids,
                           completion_mask=self.completion_mask, completions=self.completions)
        if self.metadata is not None:
            extended = replace(extended, metadata=self.metadata)
        return extended.to_samples()


def planned_anchors(plan: ContinuationPlan, rollout: Rollout) -> tuple[Tensor, Tensor]:
    """(anchor_positions, valid), each (N, M+2), of the plan's anchors on these responses."""
    mask = rollout.completion_mask
    if plan.anchor_offsets is not None:
        return anchor_positions_from_offsets(plan.anchor_offsets.to(mask.device), rollout.lengths)
    if plan.boundary is None:
        raise ValueError("a ContinuationPlan needs anchor_offsets or a boundary marker")
    return boundary_anchor_positions(plan.boundary(rollout.completion_ids), mask, plan.num_anchors)


def request_pairs(valid: Tensor, fresh_start: bool) -> tuple[Tensor, Tensor]:
    """(sample, column) pairs that need continuations: valid interior anchors, plus column 0 if fresh."""
    need = valid.clone()
    need[:, -1] = False  # Û(T) = RM(W) exactly
    need[:, 0] = fresh_start  # Û(0) by K fresh samples, or by the group's leave-one-out mean
    rows, cols = need.nonzero(as_tuple=True)
    return rows, cols


def sample_continuations(engine: RolloutEngine, model: nn.Module, rollout: Rollout, anchor_positions: Tensor,
                         rows: Tensor, cols: Tensor, k: int, sampling: SamplingConfig) -> Continuations:
    """Sample ``k`` continuations for each (rows[i], cols[i]) prefix in one batched generate pass."""
    device = rollout.completion_ids.device
    starts = anchor_positions[rows, cols]
    prefixes: list[list[int]] = []
    for n, s in zip(rows.tolist(), starts.tolist(), strict=True):
        prompt = rollout.prompt_ids[n][rollout.prompt_mask[n].bool()].tolist()
        prefixes.append(prompt + rollout.completion_ids[n, :s].tolist())
    budget = (sampling.max_new_tokens - starts).clamp(min=1)  # same total length limit as the original response
    # Each prefix's continuations are generated only up to its own budget (nothing is generated to be thrown away).
    # A rank with no valid anchor still calls the engine: under sharded generation it must keep joining the other
    # ranks' collectives (the engine pads its calls to the busiest rank's count).
    gen = engine.continue_from(model, prefixes, k, sampling, budgets=budget if budget.numel() else None)
    rep_starts = starts.repeat_interleave(k).tolist()
    rep_rows = rows.repeat_interleave(k)
    pieces = []
    for i, (n, s) in enumerate(zip(rep_rows.tolist(), rep_starts, strict=True)):
        cont = gen.completion_ids[i][gen.completion_mask[i].bool()]
        pieces.append(torch.cat([rollout.completion_ids[n, :s], cont.to(device)]))
    ids = right_pad(pieces, engine.pad_id).to(device)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(pieces):
        mask[i, : p.numel()] = 1
    texts = engine.tokenizer.batch_decode(ids, skip_special_tokens=True)
    generated = int(gen.completion_mask.sum()) if rows.numel() else 0
    empty = torch.zeros(0, dtype=torch.long, device=device)
    return Continuations(rep_rows, cols.repeat_interleave(k), ids, mask, texts, generated, gen.num_calls,
                         gen.truncated.to(device) if rows.numel() else empty.bool(),
                         gen.completion_mask.sum(-1).to(device) if rows.numel() else empty)


def tree_rows(rollout: Rollout, cont: Continuations, pad_id: int, rewards: Tensor, advantages: Tensor,
              tokenizer: Any) -> Rollout:
    """The continuations as rows of their own (TRePO ``train_continuations``): row c's prompt is its response's prompt
    followed by the prefix W_{0,s} it continued (so the prefix is context, never trained twice), its completion the
    continuation's own generated tokens (EOS included); ``rewards`` (C,) and ``advantages`` (C,) per row."""
    device = rollout.completion_ids.device
    lengths = cont.completion_mask.sum(-1).tolist()
    prompts, completions, starts = [], [], []
    for i, n in enumerate(cont.sample_index.tolist()):
        s = lengths[i] - int(cont.generated_lengths[i])
        starts.append(s)
        prompt = rollout.prompt_ids[n][rollout.prompt_mask[n].bool()]
        prompts.append(torch.cat([prompt, cont.completion_ids[i, :s]]).tolist())
        completions.append(cont.completion_ids[i, s:lengths[i]])
    p_ids, p_mask = left_pad(prompts, pad_id, device)
    c_ids = right_pad(completions, pad_id).to(device) if completions else \
        torch.zeros(0, 1, dtype=torch.long, device=device)
    c_mask = torch.zeros_like(c_ids)
    for i, c in enumerate(completions):
        c_mask[i, : c.numel()] = 1
    rows = cont.sample_index.tolist()
    prefix_text = tokenizer.batch_decode([cont.completion_ids[i, :s] for i, s in enumerate(starts)],
                                         skip_special_tokens=True) if rows else []
    return Rollout(
        prompt_ids=p_ids, prompt_mask=p_mask, completion_ids=c_ids, completion_mask=c_mask,
        group_index=rollout.group_index[cont.sample_index], group_size=rollout.group_size,
        prompts=[rollout.prompts[n] + t for n, t in zip(rows, prefix_text, strict=True)],
        completions=tokenizer.batch_decode(c_ids, skip_special_tokens=True) if rows else [],
        metadata=[rollout.metadata[n] for n in rows],
        truncated=cont.truncated if cont.truncated is not None else torch.zeros(len(rows), dtype=torch.bool),
        rewards=rewards, advantages=advantages,
    )


LEFT_PADDED = ("prompt_ids", "prompt_mask")


def append_rows(first: Rollout, second: Rollout, pad_id: int) -> Rollout:
    """``first``'s rows followed by ``second``'s, every per-sample field joined (prompts left padded, completions and
    per-token tensors right padded, with ``pad_id`` for ids and 0 elsewhere); fields that only ``first`` has per
    anchor (``anchor_positions``, ``anchor_values``) are dropped. The rest (group size, greedy, timings) is
    ``first``'s. A field set on one side only is an error (the rows would not line up)."""
    out = {}
    for name in Rollout.PER_SAMPLE:
        a, b = getattr(first, name), getattr(second, name)
        if name in ("anchor_positions", "anchor_values") or (a is None and b is None):
            out[name] = None
            continue
        if a is None or b is None:
            raise ValueError(f"append_rows: field {name!r} is set on one rollout only")
        out[name] = a + b if isinstance(a, list) else _join(a, b, pad_id if name == "completion_ids" or
                                                              name == "prompt_ids" else 0, name in LEFT_PADDED)
    return replace(first, **out)


def _join(a: Tensor, b: Tensor, value: float, left: bool) -> Tensor:
    """Concatenate rows of two tensors, padding their last dimension to the wider one (on the left if ``left``)."""
    if a.dim() > 1 and a.shape[-1] != b.shape[-1]:
        width = max(a.shape[-1], b.shape[-1])
        a, b = (F.pad(x, (width - x.shape[-1], 0) if left else (0, width - x.shape[-1]), value=value) for x in (a, b))
    return torch.cat([a, b.to(a.device, a.dtype)])


class BoundaryMarker:
    """Marks completion tokens whose text matches a regex (e.g. a newline), per token id, cached."""

    def __init__(self, tokenizer: Any, pattern: str) -> None:
        try:
            self.regex = re.compile(pattern)
        except re.error as err:
            raise ValueError(f"boundary_pattern {pattern!r} is not a valid regex ({err})") from err
        self.tokenizer = tokenizer
        self._table: Tensor | None = None

    def table(self) -> Tensor:
        if self._table is None:
            size = len(self.tokenizer)
            texts = self.tokenizer.batch_decode([[i] for i in range(size)])
            self._table = torch.tensor([bool(self.regex.search(t)) for t in texts], dtype=torch.bool)
        return self._table

    def __call__(self, completion_ids: Tensor) -> Tensor:
        """(N, L) ids -> (N, L) bool, True where the token completes a marker (decided from the prefix)."""
        table = self.table().to(completion_ids.device)
        return table[completion_ids.clamp(max=table.numel() - 1)]
