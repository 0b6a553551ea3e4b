"""TRePO anchors: offsets drawn before generation, boundary anchors, anchor values."""
from __future__ import annotations

import math

import pytest
import torch

from lightning_trepo.algorithms.anchors import (
    anchor_positions_from_offsets,
    boundary_anchor_positions,
    build_anchor_values,
    continuation_means,
    fixed_anchor_offsets,
)

F64 = torch.float64


def test_uniform_offsets_are_sorted_distinct_and_in_range() -> None:
    gen = torch.Generator().manual_seed(0)
    shared = fixed_anchor_offsets(3, 10, generator=gen)
    assert shared.shape == (3,)
    per_sample = fixed_anchor_offsets(3, 10, num_samples=50, generator=gen)
    assert per_sample.shape == (50, 3)
    for row in [shared, *per_sample]:
        assert (row[1:] > row[:-1]).all()
        assert row.min() >= 1 and row.max() <= 9
    a = fixed_anchor_offsets(2, 8, generator=torch.Generator().manual_seed(7))
    b = fixed_anchor_offsets(2, 8, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_uniform_offsets_are_uniform_over_subsets() -> None:
    # M=1 from {1, 2, 3}: each with probability 1/3; n = 6000 draws, SE = sqrt(p(1-p)/n) ≈ 0.0061, allow 5 SE
    n = 6000
    draws = fixed_anchor_offsets(1, 4, num_samples=n, generator=torch.Generator().manual_seed(1))[:, 0]
    freq = torch.bincount(draws, minlength=4)[1:].double() / n
    se = math.sqrt((1 / 3) * (2 / 3) / n)
    assert (freq - 1 / 3).abs().max() < 5 * se


def test_every_k_offsets() -> None:
    assert fixed_anchor_offsets(10, 10, mode="every", every=3).tolist() == [3, 6, 9]
    assert fixed_anchor_offsets(2, 10, mode="every", every=3).tolist() == [3, 6]
    assert fixed_anchor_offsets(2, 10, mode="every", every=3, num_samples=2).tolist() == [[3, 6], [3, 6]]


def test_offset_errors() -> None:
    with pytest.raises(ValueError, match="valid: uniform, every"):
        fixed_anchor_offsets(1, 5, mode="random")
    with pytest.raises(ValueError, match="cannot draw 5 distinct"):
        fixed_anchor_offsets(5, 5)
    with pytest.raises(ValueError, match="every >= 1"):
        fixed_anchor_offsets(2, 5, mode="every")


def test_positions_from_offsets_collapse_onto_the_length() -> None:
    # offsets [2, 5]; T = 7 keeps both; T = 4 collapses 5 -> 4 (padding anchor); T = 2 collapses both
    positions, valid = anchor_positions_from_offsets(torch.tensor([2, 5]), torch.tensor([7, 4, 2]))
    assert positions.tolist() == [[0, 2, 5, 7], [0, 2, 4, 4], [0, 2, 2, 2]]
    assert valid.tolist() == [[True, True, True, True], [True, True, False, True], [True, False, False, True]]
    per_sample, _ = anchor_positions_from_offsets(torch.tensor([[1, 3], [2, 3]]), torch.tensor([5, 2]))
    assert per_sample.tolist() == [[0, 1, 3, 5], [0, 2, 2, 2]]


def test_positions_from_offsets_errors() -> None:
    with pytest.raises(ValueError, match="sorted"):
        anchor_positions_from_offsets(torch.tensor([3, 2]), torch.tensor([5]))
    with pytest.raises(ValueError, match=">= 1"):
        anchor_positions_from_offsets(torch.tensor([0, 2]), torch.tensor([5]))
    with pytest.raises(ValueError, match=r"\(M,\) or \(N=2, M\)"):
        anchor_positions_from_offsets(torch.tensor([[1], [2], [3]]), torch.tensor([5, 5]))


def test_boundary_anchors_take_the_first_markers_before_the_end() -> None:
    # marker 9 at t = 2, 4, 5 (T = 6): the first two -> anchors 2, 4
    # row 1: marker only at t = T = 3 (an anchor at T is no interior anchor) -> padding anchors
    tokens = torch.tensor([[5, 9, 5, 9, 9, 2], [5, 5, 9, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    positions, valid = boundary_anchor_positions(tokens == 9, mask, 2)
    assert positions.tolist() == [[0, 2, 4, 6], [0, 3, 3, 3]]
    assert valid.tolist() == [[True, True, True, True], [True, False, False, True]]
    # more anchors than the padded length
    positions, _ = boundary_anchor_positions(tokens == 9, mask, 8)
    assert positions.tolist()[0] == [0, 2, 4, 5, 6, 6, 6, 6, 6, 6]


def test_boundary_anchors_are_stopping_times() -> None:
    # changing tokens after the M-th anchor (keeping the length) never moves the anchors
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, 3, (64, 12), generator=gen)
    mask = torch.ones(64, 12, dtype=torch.long)
    positions, valid = boundary_anchor_positions(tokens == 0, mask, 2)
    last = positions[:, 2]
    after = torch.arange(1, 13)[None] > last[:, None]
    resampled = torch.where(after, torch.randint(0, 3, (64, 12), generator=gen), tokens)
    positions2, _ = boundary_anchor_positions(resampled == 0, mask, 2)
    real = valid[:, 2]
    assert torch.equal(positions2[real], positions[real])


def test_build_anchor_values_uses_rm_at_padding_anchors() -> None:
    positions = torch.tensor([[0, 2, 5, 7], [0, 2, 4, 4]])
    cont = torch.tensor([[0.2, 0.4], [0.3, float("nan")]], dtype=F64)  # no continuation at a padding anchor
    values = build_anchor_values(
        torch.tensor([0.1, 0.5], dtype=F64), cont, torch.tensor([1.0, 2.0], dtype=F64), positions
    )
    torch.testing.assert_close(
        values, torch.tensor([[0.1, 0.2, 0.4, 1.0], [0.5, 0.3, 2.0, 2.0]], dtype=F64), rtol=0, atol=0
    )
    with pytest.raises(ValueError, match=r"\(N, M\) = \(2, 2\)"):
        build_anchor_values(torch.zeros(2), torch.zeros(2, 3), torch.zeros(2), positions)


def test_continuation_means_average_each_cell_and_leave_empty_cells_nan() -> None:
    # cells (sample, column) of a (2, 3) grid; continuation rewards landing there:
    #   (0, 1): 1.0, 0.0, 0.5 -> 1.5 / 3 = 0.5       (1, 1): 2.0 -> 2.0
    #   (0, 0): 4.0, 2.0      -> 3.0                  (1, 0), (0, 2), (1, 2): none -> NaN
    scores = torch.tensor([1.0, 4.0, 0.0, 2.0, 0.5, 2.0], dtype=F64)
    rows = torch.tensor([0, 0, 0, 1, 0, 0])
    cols = torch.tensor([1, 0, 1, 1, 1, 0])
    got = continuation_means(scores, rows, cols, (2, 3))
    nan = math.nan
    torch.testing.assert_close(got, torch.tensor([[3.0, 0.5, nan], [nan, 2.0, nan]], dtype=F64), equal_nan=True,
                               rtol=0, atol=1e-12)


def test_continuation_means_of_nothing_is_all_nan() -> None:
    empty = torch.zeros(0, dtype=torch.long)
    assert continuation_means(torch.zeros(0), empty, empty, (2, 4)).isnan().all()
