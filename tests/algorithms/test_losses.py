"""Aggregation modes, policy-gradient / clipped surrogate / value losses: hand values and properties."""
from __future__ import annotations

import math

import pytest
import torch

from lightning_trepo.algorithms.losses import (
    aggregate,
    aggregate_denominator,
    cispo_loss,
    clipped_surrogate_loss,
    explained_variance,
    policy_gradient_loss,
    sapo_loss,
    surrogate_loss,
    truncated_filtered_mask,
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


@pytest.mark.parametrize(("mode", "denominator"), [
    ("token_mean", 4), ("seq_mean_token_mean", 2), ("seq_mean_token_sum", 2), ("seq_mean_token_sum_norm", 6)])
def test_rows_appended_after_rescaling_add_to_the_first_rows_mean(mode: str, denominator: float) -> None:
    # appending row [5, 6, pad] raises the denominator D; scaling every row by D(all) / D(first two rows) makes the
    # aggregate the first rows' own aggregate plus the new row's term over D(first two rows), not a diluted mean
    close(torch.as_tensor(aggregate_denominator(MASK, mode), dtype=F64), float(denominator))
    extra_x, extra_m = torch.tensor([[5.0, 6.0, 0.0]], dtype=F64), torch.tensor([[1, 1, 0]])
    x, m = torch.cat([X, extra_x]), torch.cat([MASK, extra_m])
    scale = aggregate_denominator(m, mode) / aggregate_denominator(MASK, mode)
    own = 11 / 2 if mode == "seq_mean_token_mean" else 11  # the new row's term: its mean (seq_mean_token_mean) or sum
    close(aggregate(x * scale, m, mode), aggregate(X, MASK, mode) + own / denominator)


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


def _nan_padded(*tensors: torch.Tensor, width: int = 2) -> list[torch.Tensor]:
    """Each (N, L) tensor with ``width`` extra columns of NaN (advantages (N,) stay as they are)."""
    out = []
    for t in tensors:
        if t.dim() == 2:
            t = torch.cat([t, torch.full((t.shape[0], width), float("nan"), dtype=t.dtype)], 1)
        out.append(t)
    return out


LOSS_CASES = {
    "policy_gradient": lambda lp, old, adv, m: policy_gradient_loss(lp, adv, m, "seq_mean_token_mean"),
    "ppo_dual_clip": lambda lp, old, adv, m: clipped_surrogate_loss(lp, old, adv, m, dual_clip=3.0),
    "gspo": lambda lp, old, adv, m: clipped_surrogate_loss(lp, old, adv, m, importance_level="sequence"),
    "cispo": lambda lp, old, adv, m: cispo_loss(lp, old, adv, m),
    "sapo": lambda lp, old, adv, m: sapo_loss(lp, old, adv, m),
    "value": lambda lp, old, adv, m: value_loss(lp, old, adv, m, clip=0.2),
    "value_unclipped": lambda lp, old, adv, m: value_loss(lp, old, adv, m, clip=None),
}


@pytest.mark.parametrize("name", sorted(LOSS_CASES))
@pytest.mark.parametrize("token_advantages", [False, True])
def test_nan_padding_changes_neither_value_nor_gradient(name: str, token_advantages: bool) -> None:
    # the losses.py promise: padded entries are ignored even when they hold NaN, in the loss, its metrics
    # and its gradient (which must be exactly 0 at padded positions, not NaN·0 = NaN)
    gen = torch.Generator().manual_seed(4)
    lp = torch.randn(3, 4, dtype=F64, generator=gen) - 1.0
    old = lp + 0.3 * torch.randn(3, 4, dtype=F64, generator=gen)
    adv = torch.randn(3, 4, dtype=F64, generator=gen) if token_advantages or name.startswith("value") else \
        torch.randn(3, dtype=F64, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    clean_lp = lp.clone().requires_grad_(True)
    clean = LOSS_CASES[name](clean_lp, old, adv, mask)
    clean.loss.backward()
    nan_lp, nan_old, nan_adv = _nan_padded(lp, old, adv)
    nan_lp = torch.where(torch.cat([mask, torch.zeros(3, 2, dtype=mask.dtype)], 1).bool(), nan_lp,
                         torch.full_like(nan_lp, float("nan"))).requires_grad_(True)  # NaN inside the rows' padding too
    nan_mask = torch.cat([mask, torch.zeros(3, 2, dtype=mask.dtype)], 1)
    if adv.dim() == 2:
        nan_adv = torch.where(nan_mask.bool(), nan_adv, torch.full_like(nan_adv, float("nan")))
    nan_old = torch.where(nan_mask.bool(), nan_old, torch.full_like(nan_old, float("nan")))
    out = LOSS_CASES[name](nan_lp, nan_old, nan_adv, nan_mask)
    out.loss.backward()
    close(out.loss, clean.loss)
    assert torch.isfinite(nan_lp.grad).all()
    close(nan_lp.grad[:, :4], clean_lp.grad)
    assert torch.equal(nan_lp.grad[~nan_mask.bool()], torch.zeros(int((nan_mask == 0).sum()), dtype=F64))
    assert set(out.metrics) == set(clean.metrics)
    for key, value in out.metrics.items():
        if key != "explained_variance":  # EV is a ratio of variances: compare as numbers, NaN only when Var(R) = 0
            close(value, clean.metrics[key], 1e-12)


def test_value_clip_frac_compares_v_itself() -> None:
    # every |V - V_old| < ε, so nothing is clipped: clip frac 0 and the loss is exactly ½ mean (V - R)². Rebuilding V
    # as V_old + clamp(V - V_old) is off by an ulp for some of these fp32 tokens, and where that moves it away from R
    # the old comparison counted the token as clipped (36 of 2,268 in the case)
    gen = torch.Generator().manual_seed(8)
    values = torch.randn(40, 60, generator=gen) * 0.05  # small V, larger V_old: V_old + (V - V_old) rounds
    old = values + (torch.rand(40, 60, generator=gen) * 2 - 1) * 0.19
    ret = torch.randn(40, 60, generator=gen) * 3
    mask = torch.ones(40, 60)
    rebuilt = old + (values - old).clamp(-0.2, 0.2)
    assert int(((rebuilt - ret) ** 2 > (values - ret) ** 2).sum()) == 32  # the old count; the rounding is real
    out = value_loss(values, old, ret, mask, clip=0.2)
    assert out.metrics["value_clip_frac"].item() == 0.0
    assert out.loss.item() == (0.5 * (values - ret) ** 2).mean().item()


def test_gspo_hand_values_and_gradient() -> None:
    # GSPO: s_i = exp(mean_t(log π - log π_old)). Row 0: log-ratios [log 1.2, log 1.5] -> s = sqrt(1.8) = 1.3416 > 1.2:
    # clipped (A = +1): ℓ = -1.2 on both tokens, no gradient. Row 1: log-ratios [log 0.9, pad] -> s = 0.9 (A = +1):
    # ℓ = -0.9, inside the clip range; ∂ℓ/∂log π = -A·s = -0.9 on its token.
    # seq_mean_token_mean: (-1.2 + -0.9) / 2 = -1.05; gradient of row 1's token: -0.9 / 2 (1 token, 2 rows)
    old = torch.zeros(2, 2, dtype=F64)
    lp = torch.tensor([[math.log(1.2), math.log(1.5)], [math.log(0.9), float("nan")]], dtype=F64, requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0]])
    adv = torch.tensor([1.0, 1.0], dtype=F64)
    out = clipped_surrogate_loss(lp, old, adv, mask, aggregation="seq_mean_token_mean", importance_level="sequence")
    close(out.loss, -1.05)
    out.loss.backward()
    close(lp.grad, torch.tensor([[0.0, 0.0], [-0.45, 0.0]], dtype=F64))
    close(out.metrics["ratio_mean"], (2 * math.sqrt(1.8) + 0.9) / 3)


def test_gspo_matches_the_sequence_level_objective_of_the_paper() -> None:
    # parity with GSPO's published objective (arXiv 2507.18071 eq. 5-7, TRL importance_sampling_level=sequence):
    # J = 1/G Σ_i min(s_i A_i, clip(s_i) A_i), s_i = exp((1/|y_i|) Σ_t log ρ_it); the value and the gradient of
    # our token form with seq_mean_token_mean must equal -J and -∇J
    gen = torch.Generator().manual_seed(5)
    lp0 = torch.randn(4, 6, dtype=F64, generator=gen) - 1.0
    old = lp0 + 0.05 * torch.randn(4, 6, dtype=F64, generator=gen)
    adv = torch.randn(4, dtype=F64, generator=gen)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4, [1] + [0] * 5])
    a, b = lp0.clone().requires_grad_(True), lp0.clone().requires_grad_(True)
    ours = clipped_surrogate_loss(a, old, adv, mask, 0.03, 0.04, "seq_mean_token_mean", importance_level="sequence")
    ours.loss.backward()
    s = (((b - old) * mask).sum(-1) / mask.sum(-1)).exp()
    reference = -torch.minimum(s * adv, s.clamp(0.97, 1.04) * adv).mean()
    reference.backward()
    close(ours.loss, reference)
    close(a.grad, b.grad)


def test_dual_clip_matches_verls_formula() -> None:
    # verl compute_policy_loss (clip_ratio_c = c): l1 = max(-Aρ, -A clip(ρ)); l3 = -A c;
    # loss = where(A < 0, min(l1, l3), l1); token_mean over the mask
    gen = torch.Generator().manual_seed(6)
    lp = torch.randn(3, 5, dtype=F64, generator=gen)
    old = lp + 1.5 * torch.randn(3, 5, dtype=F64, generator=gen)  # far off-policy: many ratios above c = 3
    adv = torch.randn(3, 5, dtype=F64, generator=gen)
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2, [1] * 5])
    ratio = (lp - old).exp()
    l1 = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.28))
    verl = torch.where(adv < 0, torch.minimum(l1, -adv * 3.0), l1)
    ours = clipped_surrogate_loss(lp, old, adv, mask, 0.2, 0.28, dual_clip=3.0)
    close(ours.loss, (verl * mask).sum() / mask.sum())
    assert 0 < float(ours.metrics["dual_clip_frac"]) < 1
    # TRL GRPOTrainer's two-sided clip `delta`: ρ1 = min(ρ, δ); loss = -min(ρ1 A, clip(ρ) A). For δ > 1 + ε_high it
    # is the same loss as a dual clip c = δ (for A > 0 the clip already caps ρ at 1 + ε_high)
    trl = -torch.minimum(ratio.clamp(max=3.0) * adv, ratio.clamp(0.8, 1.28) * adv)
    close(ours.loss, (trl * mask).sum() / mask.sum())


def test_cispo_hand_values_and_gradient() -> None:
    # ρ = [1.5, 0.5, 1.1], A = [1, -1, 2], ε = 0.2: ŵ = sg[clip(ρ)] = [1.2, 0.8, 1.1];
    # ℓ = -ŵ A log π = [-1.2·log 1.5, 0.8·log 0.5, -2.2·log 1.1], token_mean over 3 tokens;
    # ∂ℓ/∂log π = -ŵ A / 3 = [-1.2, 0.8, -2.2] / 3: clipped tokens keep their gradient (unlike PPO)
    ratio = torch.tensor([[1.5, 0.5, 1.1]], dtype=F64)
    lp = ratio.log().clone().requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0, 2.0]], dtype=F64)
    out = cispo_loss(lp, torch.zeros_like(lp), adv, torch.ones(1, 3))
    close(out.loss, (-1.2 * math.log(1.5) + 0.8 * math.log(0.5) - 2.2 * math.log(1.1)) / 3)
    out.loss.backward()
    close(lp.grad, torch.tensor([[-1.2, 0.8, -2.2]], dtype=F64) / 3)
    close(out.metrics["clip_frac"], 2 / 3, 1e-7)


def test_sapo_hand_values_gradient_and_on_policy_limit() -> None:
    # f(ρ) = (4/τ) σ(τ(ρ - 1)); A = +1 uses τ_pos = 1, A = -1 uses τ_neg = 1.05.
    # ρ = 1.5, A = +1: ℓ = -4 σ(0.5); ρ = 0.5, A = -1: ℓ = +(4/1.05) σ(-0.525)
    # ∂ℓ/∂log π = -A f'(ρ) ρ = -A · 4 σ(1-σ) · ρ (f'(ρ) = 4σ(τ(ρ-1))(1-σ(τ(ρ-1))))
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    ratio = torch.tensor([[1.5, 0.5]], dtype=F64)
    lp = ratio.log().clone().requires_grad_(True)
    adv = torch.tensor([1.0, -1.0], dtype=F64)
    out = sapo_loss(lp, torch.zeros_like(lp), torch.tensor([[1.0, -1.0]], dtype=F64), torch.ones(1, 2))
    close(out.loss, (-4 * sig(0.5) + (4 / 1.05) * sig(-0.525)) / 2)
    out.loss.backward()
    s1, s2 = sig(0.5), sig(-0.525)
    close(lp.grad, torch.tensor([[-4 * s1 * (1 - s1) * 1.5, 4 * s2 * (1 - s2) * 0.5]], dtype=F64) / 2)
    # on-policy (ρ = 1): f'(1) = 1, so the gradient is the policy gradient -A ∇log π
    gen = torch.Generator().manual_seed(7)
    lp0 = torch.randn(2, 3, dtype=F64, generator=gen)
    a, b = lp0.clone().requires_grad_(True), lp0.clone().requires_grad_(True)
    sapo_loss(a, lp0, adv, torch.ones(2, 3)).loss.backward()
    policy_gradient_loss(b, adv, torch.ones(2, 3)).loss.backward()
    close(a.grad, b.grad)


def test_surrogate_loss_dispatch_and_errors() -> None:
    logp, old, adv, mask = _ppo_case()
    close(surrogate_loss("ppo", logp, old, adv, mask).loss, 0.025)
    close(surrogate_loss("cispo", logp, old, adv, mask).loss, cispo_loss(logp, old, adv, mask).loss)
    close(surrogate_loss("sapo", logp, old, adv, mask, sapo_tau=(2.0, 3.0)).loss,
          sapo_loss(logp, old, adv, mask, 2.0, 3.0).loss)
    close(surrogate_loss("gspo", logp, old, adv, mask).loss,
          clipped_surrogate_loss(logp, old, adv, mask, importance_level="sequence").loss)
    with pytest.raises(ValueError, match="valid: ppo, gspo, cispo, sapo"):
        surrogate_loss("grpo", logp, old, adv, mask)
    with pytest.raises(ValueError, match="valid: token, sequence"):
        clipped_surrogate_loss(logp, old, adv, mask, importance_level="group")
    with pytest.raises(ValueError, match="tau_pos > 0"):
        sapo_loss(logp, old, adv, mask, tau_pos=0.0)


def test_truncated_filtered_mask() -> None:
    # DAPO overlong filtering: row 1 has no EOS (truncated) and leaves the loss entirely
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    out = truncated_filtered_mask(mask, torch.tensor([False, True]))
    assert torch.equal(out, torch.tensor([[1, 1, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="truncated must have shape"):
        truncated_filtered_mask(mask, torch.tensor([True]))
