"""KL estimators k1 / k2 / k3: hand values and exact (un)biasedness on a categorical distribution."""
from __future__ import annotations

import math

import pytest
import torch

from lightning_trepo.algorithms.kl import kl_estimate, kl_penalized_rewards

F64 = torch.float64


def test_hand_values() -> None:
    # π(w) = 0.5, π_ref(w) = 0.25: log π - log π_ref = log 2, Δ = -log 2
    # k1 = log 2; k2 = ½ (log 2)²; k3 = e^{-log 2} + log 2 - 1 = log 2 - 0.5
    lp, ref = torch.tensor([math.log(0.5)], dtype=F64), torch.tensor([math.log(0.25)], dtype=F64)
    ln2 = math.log(2)
    torch.testing.assert_close(kl_estimate(lp, ref, "k1"), torch.tensor([ln2], dtype=F64), rtol=0, atol=1e-15)
    torch.testing.assert_close(kl_estimate(lp, ref, "k2"), torch.tensor([0.5 * ln2**2], dtype=F64), rtol=0, atol=1e-15)
    torch.testing.assert_close(kl_estimate(lp, ref), torch.tensor([ln2 - 0.5], dtype=F64), rtol=0, atol=1e-15)


def test_k1_and_k3_are_unbiased_k2_is_not() -> None:
    # w ~ p: E_p[k1] = E_p[log p/q] = KL(p‖q); E_p[k3] = Σ p (q/p - 1) + KL = 0 + KL; E_p[k2] = ½ E (log p/q)² ≠ KL
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(6, dtype=F64, generator=gen), 0)
    q = torch.softmax(torch.randn(6, dtype=F64, generator=gen), 0)
    kl = (p * (p / q).log()).sum()
    for kind in ("k1", "k3"):
        torch.testing.assert_close((p * kl_estimate(p.log(), q.log(), kind)).sum(), kl, rtol=0, atol=1e-14)
    assert abs(float((p * kl_estimate(p.log(), q.log(), "k2")).sum() - kl)) > 1e-3


def test_k3_is_non_negative_and_zero_on_policy() -> None:
    gen = torch.Generator().manual_seed(1)
    lp, ref = torch.randn(4, 7, generator=gen), torch.randn(4, 7, generator=gen)
    assert (kl_estimate(lp, ref) >= 0).all()
    assert torch.equal(kl_estimate(lp, lp), torch.zeros(4, 7))
    assert torch.isfinite(kl_estimate(torch.zeros(1), torch.tensor([200.0]), clamp=10.0)).all()


def test_errors() -> None:
    with pytest.raises(ValueError, match="valid: k1, k2, k3"):
        kl_estimate(torch.zeros(2), torch.zeros(2), "k4")
    with pytest.raises(ValueError, match="differ in shape"):
        kl_estimate(torch.zeros(2), torch.zeros(3))


def test_kl_penalized_rewards() -> None:
    # r' = r - β Σ_t m·kl: [1 - 0.1·(0.5+1.5), 2 - 0.1·3] (padded kl ignored)
    kl = torch.tensor([[0.5, 1.5, 9.0], [3.0, 9.0, 9.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    out = kl_penalized_rewards(torch.tensor([1.0, 2.0], dtype=F64), kl, mask, 0.1)
    torch.testing.assert_close(out, torch.tensor([0.8, 1.7], dtype=F64), rtol=0, atol=1e-15)
