"""The variance meter's statistics, on hand-derived cases."""
from __future__ import annotations

import math

import pytest
import torch

from lightning_trepo.diagnostics.stats import (
    CountSketch,
    bootstrap_weights,
    cosine_to_pooled,
    figures,
    flatten,
    summarize,
    total_variance,
    weighted_total_variance,
)

G3 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)


def test_total_variance_by_hand():
    # mean (1, 0); |g - mean|^2 = 1 + 1; / (R - 1) = 2
    assert float(total_variance(torch.tensor([[0.0, 0.0], [2.0, 0.0]]))) == pytest.approx(2.0, abs=1e-12)
    # mean 0; squared norms 1 + 1 + 2 = 4; / 2 = 2
    assert float(total_variance(G3)) == pytest.approx(2.0, abs=1e-12)


def test_weighted_variance_is_the_variance_of_the_resample():
    # counts (2, 0, 1) = the resample [g1, g1, g3]: mean (1/3, -1/3); deviations 5/9, 5/9, 20/9; sum 30/9 / 2 = 5/3
    v = weighted_total_variance(G3, torch.tensor([[2.0, 0.0, 1.0]], dtype=torch.float64))
    assert float(v[0]) == pytest.approx(5.0 / 3.0, abs=1e-12)
    assert float(v[0]) == pytest.approx(float(total_variance(G3[[0, 0, 2]])), abs=1e-12)


def test_variance_needs_two_repeats():
    with pytest.raises(ValueError, match="at least 2 repeats"):
        total_variance(torch.zeros(1, 3))


def test_cosine_to_pooled_by_hand():
    # pooled mean of e1 and e2 is (1/2, 1/2): cos = (1/2) / (1 · √2/2) = 1/√2 for both
    cos = cosine_to_pooled(torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(cos, torch.full((2,), 1 / math.sqrt(2), dtype=torch.float64))


def test_figures_by_hand():
    # estimator 0: G3 (V = 2), 10/20/30 tokens (mean 20): V·T = 40; mean 0 so |E g|^2 estimate = 0 - 2/3
    # estimator 1: 2·G3 (V = 8), 1 token: V·T = 8; its mean is also 0
    grads = torch.stack([G3, 2 * G3])
    tokens = torch.tensor([[10.0, 20.0, 30.0], [1.0, 1.0, 1.0]])
    f = figures(grads, tokens, torch.ones(1, 3, dtype=torch.float64))
    torch.testing.assert_close(f["variance"][0], torch.tensor([2.0, 8.0], dtype=torch.float64))
    torch.testing.assert_close(f["tokens"][0], torch.tensor([20.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(f["variance_x_tokens"][0], torch.tensor([40.0, 8.0], dtype=torch.float64))
    torch.testing.assert_close(f["mean_norm2"][0], torch.tensor([-2 / 3, -8 / 3], dtype=torch.float64))


def test_bootstrap_weights_are_counts():
    w = bootstrap_weights(5, 7, torch.Generator().manual_seed(0))
    assert w.shape == (7, 5) and bool((w.sum(1) == 5).all()) and bool((w == w.round()).all())


def test_summarize_covers_a_known_variance():
    """400 draws of N(0, I_10) + offset: tr Cov = 10. The 95% interval holds 10 and excludes 10·1.5 and 10/1.5;
    the interval of variance x tokens is the variance's times the constant 3 tokens."""
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(1, 400, 10, generator=gen, dtype=torch.float64) + 5.0
    s = summarize(g, torch.full((1, 400), 3.0), resamples=500, seed=0)
    iv = s["variance"][0]
    assert iv.value == pytest.approx(float(total_variance(g[0])), rel=1e-12)
    assert iv.contains(10.0) and not iv.contains(15.0) and not iv.contains(10.0 / 1.5)
    vt = s["variance_x_tokens"][0]
    assert (vt.low, vt.value, vt.high) == pytest.approx((3 * iv.low, 3 * iv.value, 3 * iv.high), rel=1e-12)
    assert s["cosine_to_pooled"][0].value == pytest.approx(1.0, abs=1e-12)  # one estimator is its own pool


def test_count_sketch_by_hand():
    sketch = CountSketch([torch.Size([3, 2]), torch.Size([4])], dim=8, seed=0)
    # a one-hot vector lands on one bucket with sign ±1: its sketch has exactly one entry of size 1
    one_hot = [torch.zeros(3, 2), torch.zeros(4)]
    one_hot[1][2] = 1.0
    s = sketch(one_hot)
    assert float(s.abs().sum()) == 1.0 and float(s.pow(2).sum()) == 1.0
    # linear: S(x + y) = Sx + Sy
    gen = torch.Generator().manual_seed(1)
    x = [torch.randn(3, 2, generator=gen), torch.randn(4, generator=gen)]
    y = [torch.randn(3, 2, generator=gen), torch.randn(4, generator=gen)]
    torch.testing.assert_close(sketch([a + b for a, b in zip(x, y, strict=True)]), sketch(x) + sketch(y))
    assert flatten(x).shape == (10,)


def test_count_sketch_preserves_norms_within_its_error():
    """|Sx|^2 / |x|^2 has mean 1 and std ≈ √(2/d) = 2.2% at d = 4096: within 4 std of 1 for a 20 000-dim x."""
    gen = torch.Generator().manual_seed(2)
    x = [torch.randn(20000, generator=gen, dtype=torch.float64)]
    ratio = float(CountSketch([torch.Size([20000])], 4096, seed=3)(x).pow(2).sum() / x[0].pow(2).sum())
    assert abs(ratio - 1.0) < 4 * math.sqrt(2 / 4096)
