"""Statistics of repeated policy-gradient estimates: total variance, cost-weighted variance, cosine to the pooled
mean, paired bootstrap intervals, and a fixed random projection (count sketch) of the gradient.

All functions are pure. Shapes: E estimators, R repeats (independent rollouts), d gradient coordinates
(all trainable parameters, or their projection). ``grads`` (E, R, d), ``tokens`` (E, R) generated tokens of
each estimate. The repeat r of every estimator comes from the same rollout, so the bootstrap resamples
repeats jointly (paired) across estimators.

The paper's claim measured here (https://arxiv.org/abs/2506.02553, Theorem 2 and TRePO): per-token
Monte Carlo advantages lower the variance of the token-level policy-gradient estimate.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

FIGURES = ("variance", "variance_x_tokens", "cosine_to_pooled", "mean_norm2", "tokens")


def weighted_total_variance(grads: Tensor, weights: Tensor) -> Tensor:
    """V = (Σ_r w_r ‖g_r‖² − R ‖ḡ‖²) / (R − 1), ḡ = (1/R) Σ_r w_r g_r, with Σ_r w_r = R.

    ``grads`` (..., R, d), ``weights`` (B, R) bootstrap counts (all ones: the plain unbiased estimate
    (1/(R−1)) Σ_r ‖g_r − ḡ‖² of tr Cov(g) = E‖g − E g‖²). Returns (B, ...).
    """
    r = grads.shape[-2]
    if r < 2:
        raise ValueError(f"the total variance needs at least 2 repeats, got {r}")
    sq = grads.pow(2).sum(-1)  # (..., R)
    mean = torch.einsum("br,...rd->b...d", weights.to(grads), grads) / r
    first = torch.einsum("br,...r->b...", weights.to(grads), sq)
    return (first - r * mean.pow(2).sum(-1)) / (r - 1)


def total_variance(grads: Tensor) -> Tensor:
    """E‖g − E g‖² estimated without bias from R repeats: (R, d) -> () (or (..., R, d) -> (...))."""
    return weighted_total_variance(grads, torch.ones(1, grads.shape[-2], dtype=grads.dtype))[0]


def cosine_to_pooled(means: Tensor) -> Tensor:
    """cos(ḡ_e, p) with p = (1/E) Σ_f ḡ_f the estimators' pooled mean: (..., E, d) -> (..., E)."""
    pooled = means.mean(-2, keepdim=True)
    dots = (means * pooled).sum(-1)
    return dots / (means.norm(dim=-1) * pooled.norm(dim=-1)).clamp_min(1e-300)


def figures(grads: Tensor, tokens: Tensor, weights: Tensor) -> dict[str, Tensor]:
    """Every reported figure for each bootstrap weight row: dict of (B, E) tensors.

    variance V_e; tokens T_e = mean generated tokens per estimate; variance_x_tokens V_e·T_e (the cost-fair
    figure: the variance of an average of n estimates is V/n, so at a fixed token budget it is ∝ V·T);
    cosine_to_pooled cos(ḡ_e, pooled mean); mean_norm2 ‖ḡ_e‖² − V_e/R, unbiased for ‖E g_e‖².
    """
    r = grads.shape[1]
    w = weights.to(grads)
    variance = weighted_total_variance(grads, w)  # (B, E)
    means = torch.einsum("br,erd->bed", w, grads) / r
    tok = torch.einsum("br,er->be", w, tokens.to(grads)) / r
    return {"variance": variance, "variance_x_tokens": variance * tok, "cosine_to_pooled": cosine_to_pooled(means),
            "mean_norm2": means.pow(2).sum(-1) - variance / r, "tokens": tok}


def bootstrap_weights(repeats: int, resamples: int, generator: torch.Generator) -> Tensor:
    """(B, R) counts of each repeat in B resamples of R repeats drawn with replacement (Efron 1979)."""
    picks = torch.randint(0, repeats, (resamples, repeats), generator=generator)
    return torch.zeros(resamples, repeats, dtype=torch.float64).scatter_add_(
        1, picks, torch.ones(resamples, repeats, dtype=torch.float64))


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap percentile interval."""

    value: float
    low: float
    high: float

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


def summarize(grads: Tensor, tokens: Tensor, resamples: int = 1000, level: float = 0.95, seed: int = 0,
              chunk: int = 100) -> dict[str, list[Interval]]:
    """Point estimates (all repeats) and paired-bootstrap percentile intervals of every figure, per estimator.

    Returns ``{figure: [Interval for each of the E estimators]}``. Resamples are processed ``chunk`` at a time
    (the (chunk, E, d) resampled means are the largest intermediate).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"the interval level must be in (0, 1), got {level}")
    grads = grads.double()
    e, r, _ = grads.shape
    point = figures(grads, tokens, torch.ones(1, r, dtype=torch.float64))
    gen = torch.Generator().manual_seed(seed)
    weights = bootstrap_weights(r, resamples, gen)
    parts = [figures(grads, tokens, weights[i:i + chunk]) for i in range(0, resamples, chunk)]
    alpha = (1.0 - level) / 2
    out: dict[str, list[Interval]] = {}
    for name in FIGURES:
        boot = torch.cat([p[name] for p in parts])  # (B, E)
        low, high = torch.quantile(boot, torch.tensor([alpha, 1 - alpha], dtype=boot.dtype), dim=0)
        out[name] = [Interval(float(point[name][0, i]), float(low[i]), float(high[i])) for i in range(e)]
    return out


class CountSketch:
    """A fixed random projection S: R^D -> R^d, (Sx)_k = Σ_{i: h(i)=k} s(i) x_i, h uniform, s = ±1.

    E[⟨Sx, Sy⟩] = ⟨x, y⟩ exactly (the cross terms have zero-mean signs), and Var ‖Sx‖² ≈ 2‖x‖⁴/d, so a
    total variance from sketched gradients is unbiased with a relative error of about √(2/d) (Charikar, Chen
    and Farach-Colton 2002; Weinberger et al. 2009). One O(D) pass per gradient; the hashes of each parameter
    are drawn once from ``seed`` and kept (int32 bucket + int8 sign: 5 bytes per parameter).
    """

    def __init__(self, shapes: Sequence[torch.Size], dim: int, seed: int = 0) -> None:
        if dim < 1:
            raise ValueError(f"projection dim must be >= 1, got {dim}")
        self.dim = dim
        gen = torch.Generator().manual_seed(seed)
        self._buckets, self._signs = [], []
        for shape in shapes:
            code = torch.randint(0, 2 * dim, (int(torch.Size(shape).numel()),), generator=gen, dtype=torch.int32)
            self._buckets.append(code // 2)  # h(i)
            self._signs.append((1 - 2 * (code % 2)).to(torch.int8))  # s(i) = ±1

    def __call__(self, grads: Sequence[Tensor]) -> Tensor:
        """S applied to the concatenation of ``grads`` (one tensor per parameter, in the constructor's order).
        Buckets accumulate in float32 (about D/d terms each), the result is float64."""
        out = torch.zeros(self.dim, dtype=torch.float32)
        for g, bucket, sign in zip(grads, self._buckets, self._signs, strict=True):
            out.index_add_(0, bucket, g.detach().reshape(-1).to("cpu", torch.float32) * sign)
        return out.double()


def flatten(grads: Sequence[Tensor]) -> Tensor:
    """The full gradient as one float64 vector (the unprojected mode)."""
    return torch.cat([g.detach().reshape(-1).to("cpu", torch.float64) for g in grads])
