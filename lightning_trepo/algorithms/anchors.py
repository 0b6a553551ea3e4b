"""TRePO anchors: where U is estimated, and the anchor values fed to ``segment_advantages``.

Anchors must be **stopping times** (decided from the prefix W_{0,s} only, never from later tokens or
the final length): then E[U(W_{0,s}) | W_{0,t}] = U(W_{0,t}) for s >= t (optional stopping of the
martingale U) and the segment advantages are unbiased (design.md §5, https://arxiv.org/abs/2506.02553).
Offsets drawn before generation (clipped to the realised length T, itself a stopping time) and the
first M boundary markers of a response are stopping times; ``T // 2`` is not.

Layout: ``anchor_positions`` (N, M+2) = [0, s_1, ..., s_M, T_i], non-decreasing; anchors that fall at
or after the end collapse to T_i ("padding anchors", ``valid`` False, Û = RM(W) exactly).
"""
from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

OffsetMode = Literal["uniform", "every"]
OFFSET_MODES: tuple[str, ...] = get_args(OffsetMode)


def fixed_anchor_offsets(
    num_anchors: int,
    max_len: int,
    mode: OffsetMode = "uniform",
    every: int | None = None,
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Interior anchor offsets drawn BEFORE generation: s ~ Uniform({1..max_len-1}) without replacement, sorted.

    ``mode="uniform"``: M distinct offsets, sorted; ``mode="every"``: k, 2k, ... < max_len (k = ``every``),
    the first M of them. Returns (M,) shared by the batch, or (num_samples, M) drawn independently per
    sample. Independent of the response, hence stopping times (https://arxiv.org/abs/2506.02553).
    """
    if mode not in OFFSET_MODES:
        raise ValueError(f"unknown anchor offset mode {mode!r}; valid: {', '.join(OFFSET_MODES)}")
    if max_len < 1 or num_anchors < 0:
        raise ValueError(f"need max_len >= 1 and num_anchors >= 0, got max_len={max_len}, num_anchors={num_anchors}")
    if mode == "every":
        if every is None or every < 1:
            raise ValueError(f"mode='every' needs every >= 1, got {every!r}")
        offsets = torch.arange(every, max_len, every)[:num_anchors]
        return offsets if num_samples is None else offsets.expand(num_samples, -1).clone()
    if num_anchors > max_len - 1:
        raise ValueError(f"cannot draw {num_anchors} distinct interior offsets from 1..{max_len - 1} "
                         f"(max_len={max_len})")
    rows = 1 if num_samples is None else num_samples
    keys = torch.rand(rows, max_len - 1, generator=generator)
    offsets = keys.argsort(dim=1)[:, :num_anchors].sort(dim=1).values + 1
    return offsets[0] if num_samples is None else offsets


def anchor_positions_from_offsets(offsets: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """positions = [0, min(s_1, T), ..., min(s_M, T), T]; valid = 0 < s_j < T for interior anchors.

    ``offsets`` (M,) or (N, M), sorted, >= 1; ``lengths`` (N,) the realised T_i. Returns
    ``(anchor_positions (N, M+2) long, valid (N, M+2) bool)``; the first and last columns are always
    valid (Û(0) and Û(T) = RM(W)); interior anchors with s_j >= T_i are padding anchors (invalid:
    no continuation is needed, their value is RM(W)). https://arxiv.org/abs/2506.02553
    """
    if lengths.dim() != 1:
        raise ValueError(f"lengths must have shape (N,), got {tuple(lengths.shape)}")
    lengths = lengths.long()
    if offsets.dim() == 1:
        offsets = offsets.unsqueeze(0).expand(lengths.shape[0], -1)
    if offsets.dim() != 2 or offsets.shape[0] != lengths.shape[0]:
        raise ValueError(f"offsets must have shape (M,) or (N={lengths.shape[0]}, M), got {tuple(offsets.shape)}")
    offsets = offsets.long().to(lengths.device)
    if (offsets < 1).any() or (offsets[:, 1:] < offsets[:, :-1]).any():
        raise ValueError("offsets must be >= 1 and sorted along each row")
    interior = torch.minimum(offsets, lengths[:, None])
    zeros = torch.zeros_like(lengths)[:, None]
    positions = torch.cat([zeros, interior, lengths[:, None]], dim=1)
    ones = torch.ones_like(zeros, dtype=torch.bool)
    valid = torch.cat([ones, offsets < lengths[:, None], ones], dim=1)
    return positions, valid


def boundary_anchor_positions(is_boundary: Tensor, mask: Tensor, num_anchors: int) -> tuple[Tensor, Tensor]:
    """Anchors right after the first M boundary tokens: s_j = j-th smallest t < T with is_boundary[t].

    ``is_boundary`` (N, L) bool marks tokens that end a marker (e.g. a newline or a step regex match);
    it must be decidable from the prefix W_{0,t}. Taking the *first* M markers keeps the anchors
    stopping times; choosing M among all markers of the finished response would look at the future and
    bias the gradient (https://arxiv.org/abs/2506.02553). Rows with fewer markers get padding anchors
    at T. Returns ``(anchor_positions (N, M+2), valid (N, M+2))`` as ``anchor_positions_from_offsets``.
    """
    if is_boundary.shape != mask.shape or mask.dim() != 2:
        raise ValueError(f"is_boundary {tuple(is_boundary.shape)} and mask {tuple(mask.shape)} must both be (N, L)")
    if num_anchors < 0:
        raise ValueError(f"num_anchors must be >= 0, got {num_anchors}")
    n, length = mask.shape
    lengths = mask.sum(-1).long()
    t = torch.arange(1, length + 1, device=mask.device).expand(n, length)
    hit = is_boundary.bool() & mask.bool() & (t < lengths[:, None])
    candidates = torch.where(hit, t, torch.full_like(t, length + 1)).sort(dim=1).values
    if candidates.shape[1] < num_anchors:
        pad = torch.full((n, num_anchors - candidates.shape[1]), length + 1, device=mask.device, dtype=candidates.dtype)
        candidates = torch.cat([candidates, pad], dim=1)
    return anchor_positions_from_offsets(candidates[:, :num_anchors], lengths)


def turn_boundaries(loss_mask: Tensor, mask: Tensor) -> Tensor:
    """Multi-turn episodes: True on the last environment token before a model turn, (N, L) bool. An anchor right
    after it is the start of turn 2, 3, ...: W_{0,s} holds the whole observation and nothing of the turn, so it is
    decided by the prefix alone (a stopping time). ``loss_mask`` 1 = model token, ``mask`` 1 = real token."""
    if loss_mask.shape != mask.shape or mask.dim() != 2:
        raise ValueError(f"loss_mask {tuple(loss_mask.shape)} and mask {tuple(mask.shape)} must both be (N, L)")
    model = loss_mask.bool() & mask.bool()
    env = ~loss_mask.bool() & mask.bool()
    next_is_model = torch.zeros_like(model)
    next_is_model[:, :-1] = model[:, 1:]
    return env & next_is_model


def turn_anchor_positions(loss_mask: Tensor, mask: Tensor, num_anchors: int) -> tuple[Tensor, Tensor]:
    """TRePO ``anchor_mode: turns``: anchors at the starts of the first M turns after the first (right after each
    observation), as :func:`boundary_anchor_positions` of :func:`turn_boundaries`; episodes with fewer turns get
    padding anchors at T. https://arxiv.org/abs/2506.02553 (turn boundaries are stopping times)."""
    return boundary_anchor_positions(turn_boundaries(loss_mask, mask), mask, num_anchors)


def build_anchor_values(
    start_values: Tensor, continuation_means: Tensor, final_rewards: Tensor, anchor_positions: Tensor
) -> Tensor:
    """Û at the anchors: [Û(0), Û(s_1), ..., Û(s_M), RM(W)], with Û(s_j) = RM(W) wherever s_j = T.

    ``start_values`` (N,) the start value (leave-one-out group mean or K fresh samples); ``continuation_means``
    (N, M) the mean reward of K continuations sampled from W_{0,s_j} (ignored, may be NaN, at padding
    anchors); ``final_rewards`` (N,) = RM(W). Returns (N, M+2). https://arxiv.org/abs/2506.02553 §TRePO.
    """
    n, width = anchor_positions.shape
    if continuation_means.shape != (n, width - 2):
        raise ValueError(f"continuation_means must have shape (N, M) = {(n, width - 2)}, "
                         f"got {tuple(continuation_means.shape)}")
    if start_values.shape != (n,) or final_rewards.shape != (n,):
        raise ValueError(f"start_values {tuple(start_values.shape)} and final_rewards {tuple(final_rewards.shape)} "
                         f"must have shape ({n},)")
    at_end = anchor_positions[:, 1:-1] == anchor_positions[:, -1:]
    interior = torch.where(at_end, final_rewards[:, None].expand_as(continuation_means), continuation_means)
    return torch.cat([start_values[:, None], interior, final_rewards[:, None]], dim=1)


def continuation_means(scores: Tensor, sample_index: Tensor, anchor_column: Tensor, shape: tuple[int, int]) -> Tensor:
    """Û(s) per anchor: the mean of the continuation rewards that landed in each (sample, anchor column) cell.

    Û[n, j] = (1/K_nj) Σ_{c: sample_index[c] = n, anchor_column[c] = j} scores[c], with K_nj the number of such
    continuations; NaN in cells with none (no continuation was sampled there). (C,), (C,), (C,) -> ``shape``.
    """
    means = torch.full(shape, float("nan"), dtype=scores.dtype, device=scores.device)
    flat = sample_index.to(scores.device) * shape[1] + anchor_column.to(scores.device)
    sums = torch.zeros(shape[0] * shape[1], dtype=scores.dtype, device=scores.device).index_add_(0, flat, scores)
    counts = torch.zeros_like(sums).index_add_(0, flat, torch.ones_like(scores))
    filled = counts > 0
    means.view(-1)[filled] = sums[filled] / counts[filled]
    return means
