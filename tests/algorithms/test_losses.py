"""Aggregation modes, policy-gradient / clipped surrogate / value losses: hand values and properties."""
from __future__ import annotations

import math

import pytest
import torch

from lightning_trepo.algorithms.losses import (
    aggregate,
    clipped_surrogate_loss,
    explained_variance,
    policy_gradient_loss,
    value_loss,
)

F64 = torch.float64
X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]], dtype=F64)
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


def close(a: torch.Tensor, b: float | torch.Tensor, tol: float = 1e-12) -> None:
    b = torch.as_tensor(b, dtype=a.dtype)
    torch.testing.assert_close(a, b, rtol=0, atol=tol)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token_mean", 10 / 4),  # (1+2+3+4) / 4 real tokens
        ("seq_mean_token_mean", 3.0),  # (6/3 + 4/1) / 2
        ("seq_mean_token_sum", 5.0),  # (6 + 4) / 2
        ("seq_mean_token_sum_norm", 10 / 6),  # 10 / (N=2 · L=3)
    ],
)
def test_aggregate_hand_values(mode: str, expected: float) -> None:
    close(aggregate(X, MASK, mode), expected)


def test_aggregate_norm_length_and_padding() -> None:
    close(aggregate(X, MASK, "seq_mean_token_sum_norm", norm_length=5), 1.0)  # 10 / (2·5)
    pad = torch.full((2, 2), float("nan"), dtype=F64)
    x2, m2 = torch.cat([X, pad], 1), torch.cat([MASK, torch.zeros(2, 2, dtype=MASK.dtype)], 1)
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum"):
        close(aggregate(x2, m2, mode), aggregate(X, MASK, mode))  # padding (even NaN) changes nothing
    close(aggregate(x2, m2, "seq_mean_token_sum_norm"), 10 / 10)  # Dr. GRPO divides by the padded L = 5
    close(aggregate(x2, m2, "seq_mean_token_sum_norm", norm_length=3), aggregate(X, MASK, "seq_mean_token_sum_norm"))


def test_aggregate_empty_sequences_give_zero_not_nan() -> None:
    m = torch.zeros(2, 3)
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"):
        assert aggregate(X, m, mode).item() == 0.0


def test_aggregate_errors() -> None:
    with pytest.raises(
        ValueError, match="valid: token_mean, seq_mean_token_mean, seq_mean_token_sum, seq_mean_token_sum_norm"
    ):
        aggregate(X, MASK, "mean")
    with pytest.raises(ValueError, match="per_token has shape"):
        aggregate(X[:, :2], MASK, "token_mean")


def test_policy_gradient_loss_value_and_gradient() -> None:
    # -A·logπ = [[2·1, 2·2], [-1·0.5, pad]] -> token_mean (2 + 4 - 0.5) / 3; ∂/∂logπ = -A / 3 on real tokens
    logp = torch.tensor([[-1.0, -2.0], [-0.5, float("nan")]], dtype=F64, requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0]])
    adv = torch.tensor([2.0, -1.0], dtype=F64, requires_grad=True)
    out = policy_gradient_loss(logp, adv, mask, "token_mean")
    close(out.loss, 5.5 / 3)
    out.loss.backward()
    close(logp.grad, torch.tensor([[-2 / 3, -2 / 3], [1 / 3, 0.0]], dtype=F64))
    assert adv.grad is None  # advantages are constants
    token_adv = torch.tensor([[2.0, 2.0], [-1.0, 7.0]], dtype=F64)
    close(policy_gradient_loss(logp, token_adv, mask, "token_mean").loss, out.loss)
    with pytest.raises(ValueError, match="advantages must have shape"):
        policy_gradient_loss(logp, torch.zeros(3), mask)


def _ppo_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    ratio = torch.tensor([[1.5, 0.5, 1.1, 0.6]], dtype=F64)
    logp = ratio.log().clone().requires_grad_(True)
    return logp, torch.zeros_like(ratio), torch.tensor([[1.0, -1.0, -1.0, 1.0]], dtype=F64), torch.ones(1, 4)


def test_clipped_surrogate_hand_values() -> None:
    # ε = 0.2. per token max(-Aρ, -A·clip(ρ)):
    #   A=+1 ρ=1.5: max(-1.5, -1.2) = -1.2  (clipped high, no gradient)
    #   A=-1 ρ=0.5: max( 0.5,  0.8) =  0.8  (clipped low, no gradient)
    #   A=-1 ρ=1.1: max( 1.1,  1.1) =  1.1  (inside, ∂/∂logπ = -Aρ = 1.1)
    #   A=+1 ρ=0.6: max(-0.6, -0.8) = -0.6  (outside but not clipped since A>0, ∂ = -0.6)
    # token_mean = (-1.2 + 0.8 + 1.1 - 0.6) / 4 = 0.025
    logp, old, adv, mask = _ppo_case()
    out = clipped_surrogate_loss(logp, old, adv, mask)
    close(out.loss, 0.025)
    out.loss.backward()
    close(logp.grad, torch.tensor([[0.0, 0.0, 1.1 / 4, -0.6 / 4]], dtype=F64))
    m = out.metrics
    close(m["clip_frac_high"], 0.25, 1e-7), close(m["clip_frac_low"], 0.25, 1e-7), close(m["clip_frac"], 0.5, 1e-7)
    close(m["ratio_mean"], (1.5 + 0.5 + 1.1 + 0.6) / 4)
    close(m["ratio_max"], 1.5)
    k3 = sum(r - 1 - math.log(r) for r in (1.5, 0.5, 1.1, 0.6)) / 4  # KL(π_old‖π) ≈ E[ρ - 1 - log ρ]
    close(m["approx_kl"], k3)


def test_clipped_surrogate_clip_higher_and_dual_clip() -> None:
    logp, old, adv, mask = _ppo_case()
    # ε_high = 0.28: the first token becomes max(-1.5, -1.28) = -1.28
    close(clipped_surrogate_loss(logp, old, adv, mask, clip_high=0.28).loss, (-1.28 + 0.8 + 1.1 - 0.6) / 4)
    # dual clip c = 3 with A = -1, ρ = 5: max(5, 1.2) = 5 is capped at -c·A = 3
    big = torch.tensor([[math.log(5.0)]], dtype=F64)
    out = clipped_surrogate_loss(
        big, torch.zeros(1, 1, dtype=F64), torch.tensor([-1.0], dtype=F64), torch.ones(1, 1), dual_clip=3.0
    )
    close(out.loss, 3.0)
    close(out.metrics["dual_clip_frac"], 1.0, 1e-7)
    close(
        clipped_surrogate_loss(
            big, torch.zeros(1, 1, dtype=F64), torch.tensor([-1.0], dtype=F64), torch.ones(1, 1)
        ).loss,
        5.0,
    )


def test_clipped_surrogate_on_policy_equals_policy_gradient() -> None:
    # at ρ = 1 the PPO gradient is the REINFORCE gradient -A ∇logπ (any aggregation)
    gen = torch.Generator().manual_seed(0)
    lp = torch.randn(3, 5, dtype=F64, generator=gen)
    adv = torch.randn(3, dtype=F64, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"):
        a, b = lp.clone().requires_grad_(True), lp.clone().requires_grad_(True)
        clipped_surrogate_loss(a, lp, adv, mask, aggregation=mode).loss.backward()
        policy_gradient_loss(b, adv, mask, mode).loss.backward()
        close(a.grad, b.grad)


def test_clipped_surrogate_padding_invariance_and_errors() -> None:
    logp, old, adv, mask = _ppo_case()
    nan = torch.full((1, 2), float("nan"), dtype=F64)
    out = clipped_surrogate_loss(
        torch.cat([logp, nan], 1),
        torch.cat([old, nan], 1),
        torch.cat([adv, nan], 1),
        torch.cat([mask, torch.zeros(1, 2)], 1),
    )
    close(out.loss, 0.025)
    assert all(torch.isfinite(v) for v in out.metrics.values())
    with pytest.raises(ValueError, match="clip_low"):
        clipped_surrogate_loss(logp, old, adv, mask, clip_low=1.0)
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        clipped_surrogate_loss(logp, old, adv, mask, dual_clip=0.5)
    with pytest.raises(ValueError, match="old_logprobs has shape"):
        clipped_surrogate_loss(logp, old[:, :2], adv, mask)


def test_value_loss_hand_values() -> None:
    # t1: V=1, V_old=0.5, R=2: (1-2)² = 1, clipped V = 0.5 + 0.2 = 0.7 -> (0.7-2)² = 1.69 -> ½·1.69 = 0.845
    # t2: V=2, V_old=2,   R=1: (2-1)² = 1, clipped V = 2            -> 1    -> ½·1    = 0.5
    values = torch.tensor([[1.0, 2.0, 9.0]], dtype=F64, requires_grad=True)
    old = torch.tensor([[0.5, 2.0, 9.0]], dtype=F64)
    ret = torch.tensor([[2.0, 1.0, 9.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 0]])
    out = value_loss(values, old, ret, mask, clip=0.2)
    close(out.loss, (0.845 + 0.5) / 2)
    close(out.metrics["value_clip_frac"], 0.5, 1e-7)
    out.loss.backward()
    close(values.grad, torch.tensor([[0.0, 0.5, 0.0]], dtype=F64))  # the clipped branch of t1 has no gradient
    close(value_loss(values, old, ret, mask, clip=None).loss, (0.5 + 0.5) / 2)
    with pytest.raises(ValueError, match="clip must be > 0"):
        value_loss(values, old, ret, mask, clip=0.0)


def test_explained_variance() -> None:
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0, 99.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    close(explained_variance(r, r, mask), 1.0)
    close(explained_variance(torch.full_like(r, 2.5), r, mask), 0.0)
    # R - V = [0, 0, 0, 1]: Var = 0.25 - 0.0625 = 0.1875; Var(R) = 1.25 -> 1 - 0.15 = 0.85
    close(explained_variance(torch.tensor([[1.0, 2.0, 3.0, 3.0, 0.0]], dtype=F64), r, mask), 0.85)
    assert torch.isnan(explained_variance(r, torch.ones_like(r), mask))
