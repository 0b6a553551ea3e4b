"""KL estimators k1 / k2 / k3: hand values and exact (un)biasedness on a categorical distribution."""
from __future__ import annotations

import math

import pytest
import torch

from lightning_trepo.algorithms.kl import adaptive_kl_coef, kl_estimate, kl_penalized_rewards

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


def test_low_var_kl_is_verls_clamped_k3() -> None:
    # verl low_var_kl: Δ clamped to ±20, k3 value clamped to ±10. Δ = log π_ref - log π:
    #   Δ = -log 2: k3 = 0.5 + log 2 - 1 (no clamp active);  Δ = 3: e³ - 4 = 16.09 -> 10 (value clamp, gradient 0);
    #   Δ = -30: clamped to -20: e^-20 + 20 - 1 = 19.000000002 -> 10
    lp = torch.tensor([0.0, 0.0, 0.0], dtype=F64, requires_grad=True)
    ref = torch.tensor([-math.log(2), 3.0, -30.0], dtype=F64)
    out = kl_estimate(lp, ref, "low_var_kl")
    torch.testing.assert_close(out, torch.tensor([math.log(2) - 0.5, 10.0, 10.0], dtype=F64), rtol=0, atol=1e-15)
    out.sum().backward()
    # ∂k3/∂log π = -(e^Δ - 1) = 1 - e^Δ = 0.5 at Δ = -log 2; 0 where a clamp is active
    torch.testing.assert_close(lp.grad, torch.tensor([0.5, 0.0, 0.0], dtype=F64), rtol=0, atol=1e-15)
    # the unclamped k3 keeps growing: e³ - 3 - 1
    torch.testing.assert_close(kl_estimate(lp, ref, "k3")[1], torch.tensor(math.exp(3) - 4, dtype=F64))


def test_abs_and_straight_through_kinds() -> None:
    # log π - log π_ref = [log 2, -1]: abs = [log 2, 1]; the "+" kinds keep each value and take k2's gradient
    # ∂k2/∂log π = log π - log π_ref = [log 2, -1]
    lp = torch.tensor([math.log(0.5), -2.0], dtype=F64)
    ref = torch.tensor([math.log(0.25), -1.0], dtype=F64)
    torch.testing.assert_close(kl_estimate(lp, ref, "abs"), torch.tensor([math.log(2), 1.0], dtype=F64))
    for kind in ("k1", "k3", "low_var_kl", "abs"):
        x = lp.clone().requires_grad_(True)
        out = kl_estimate(x, ref, f"{kind}+")
        torch.testing.assert_close(out, kl_estimate(lp, ref, kind), rtol=0, atol=1e-15)
        out.sum().backward()
        torch.testing.assert_close(x.grad, torch.tensor([math.log(2), -1.0], dtype=F64), rtol=0, atol=1e-15)


def test_straight_through_k3_has_the_exact_expected_kl_gradient() -> None:
    # θ = logits of p, w ~ p with the sample held fixed: E_p[∇θ k3+] = E_p[(log p - log q) ∇θ log p] = ∇θ KL(p‖q),
    # while plain k3 gives E_p[(1 - q/p) ∇ log p] = ∇θ KL(q‖p) (the reverse KL)
    gen = torch.Generator().manual_seed(3)
    theta = torch.randn(5, dtype=F64, generator=gen).requires_grad_(True)
    q = torch.softmax(torch.randn(5, dtype=F64, generator=gen), 0)

    def expected_grad(kind: str) -> torch.Tensor:
        logp = torch.log_softmax(theta, 0)
        (g,) = torch.autograd.grad((logp.exp().detach() * kl_estimate(logp, q.log(), kind)).sum(), theta)
        return g

    logp = torch.log_softmax(theta, 0)
    (forward,) = torch.autograd.grad((logp.exp() * (logp - q.log())).sum(), theta)
    (reverse,) = torch.autograd.grad((q * (q.log() - torch.log_softmax(theta, 0))).sum(), theta)
    torch.testing.assert_close(expected_grad("k3+"), forward, rtol=0, atol=1e-14)
    torch.testing.assert_close(expected_grad("k3"), reverse, rtol=0, atol=1e-14)


def test_adaptive_kl_coef() -> None:
    # verl / Ziegler et al.: β·(1 + clip(KL/target - 1, ±0.2)·n/horizon)
    assert adaptive_kl_coef(0.1, 0.15, 0.1, 100, 10) == pytest.approx(0.1 * (1 + 0.2 * 0.1), abs=1e-15)  # 0.5 -> 0.2
    assert adaptive_kl_coef(0.1, 0.09, 0.1, 100, 10) == pytest.approx(0.1 * (1 - 0.1 * 0.1), abs=1e-15)  # -0.1
    assert adaptive_kl_coef(0.1, 0.0, 0.1, 100, 10) == pytest.approx(0.1 * (1 - 0.2 * 0.1), abs=1e-15)  # -1 -> -0.2
    assert adaptive_kl_coef(0.1, float("nan"), 0.1, 100, 10) == 0.1
    with pytest.raises(ValueError, match="target_kl > 0"):
        adaptive_kl_coef(0.1, 0.1, 0.0, 100, 10)
