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
from torch import Tensor, nn

from lightning_trepo.algorithms.anchors import anchor_positions_from_offsets, boundary_anchor_positions
from lightning_trepo.rollout.engine import ContinuationPlan, RolloutEngine, SamplingConfig, right_pad
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

    def to_samples(self, rollout: Rollout) -> Samples:
        """The reward layer's view: each continuation scored as a full response to its sample's prompt and row."""
        extended = replace(rollout.select(self.sample_index), completion_ids=self.completion_ids,
                           completion_mask=self.completion_mask, completions=self.completions)
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
    return Continuations(rep_rows, cols.repeat_interleave(k), ids, mask, texts, generated, gen.num_calls,
                         gen.truncated.to(device) if rows.numel() else torch.zeros(0, dtype=torch.bool, device=device))


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
