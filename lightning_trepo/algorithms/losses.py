"""Policy-gradient, clipped-surrogate and value losses with the common aggregation modes.

All inputs are (N, L) per-token tensors with a right-padded ``mask`` (1 = real completion token);
padded entries are ignored even when they hold NaN or inf. Advantages may be (N,) (one per response)
or (N, L) (per token) and are treated as constants (detached).

Every algorithm module trains through :func:`clipped_surrogate_loss` (``RLModule.compute_loss``), REINFORCE, RLOO
and ReMax included: on the first pass over a rollout the ratio is 1, where the clipped surrogate's gradient is
exactly :func:`policy_gradient_loss`'s, -A ∇log π (tested: ``test_clipped_surrogate_on_policy_equals_policy_gradient``),
and a further epoch or minibatch (``update.epochs``/``num_minibatches`` > 1) is then clipped as in PPO instead of
silently off-policy. :func:`policy_gradient_loss` is the plain estimator that the theory check
(:mod:`lightning_trepo.theory.estimators`) differentiates.
"""
from __future__ import annotations

import torch
from torch import Tensor

from lightning_trepo.ops import masked_mean, masked_var
from lightning_trepo.types import LossOutput

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm")
MAX_LOG_RATIO = 20.0  # exp(±20) keeps ratios finite; as verl


def _check_mask(mask: Tensor, **tensors: Tensor) -> None:
    if mask.dim() != 2:
        raise ValueError(f"mask must have shape (N, L), got {tuple(mask.shape)}")
    for name, t in tensors.items():
        if t.shape != mask.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but mask has shape {tuple(mask.shape)}")


def _zero_padding(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.bool(), x, torch.zeros_like(x))


def _token_advantages(advantages: Tensor, mask: Tensor) -> Tensor:
    """(N,) or (N, L) -> (N, L), detached."""
    if advantages.dim() == 1 and advantages.shape[0] == mask.shape[0]:
        return advantages.detach()[:, None].expand(mask.shape)
    if advantages.shape == mask.shape:
        return advantages.detach()
    raise ValueError(f"advantages must have shape (N,) = ({mask.shape[0]},) or (N, L) = {tuple(mask.shape)}, "
                     f"got {tuple(advantages.shape)}")


def aggregate(per_token: Tensor, mask: Tensor, mode: str = "token_mean", norm_length: int | None = None) -> Tensor:
    """Reduce a per-token loss (N, L) to a scalar.

    - ``token_mean``: Σ_{n,t} m·x / Σ m (DAPO, https://arxiv.org/abs/2503.14476);
    - ``seq_mean_token_mean``: 1/N Σ_n (Σ_t m·x / Σ_t m) (original GRPO, https://arxiv.org/abs/2402.03300);
    - ``seq_mean_token_sum``: 1/N Σ_n Σ_t m·x (the unbiased REINFORCE form, https://arxiv.org/abs/2506.02553);
    - ``seq_mean_token_sum_norm``: Σ m·x / (N·L), L the padded completion length or ``norm_length``
      when given (Dr. GRPO, https://arxiv.org/abs/2503.20783; pass a constant such as
      max_new_tokens to make the scale independent of the batch's padding).
    Empty sequences contribute 0 (never NaN).
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation mode {mode!r}; valid: {', '.join(AGGREGATIONS)}")
    _check_mask(mask, per_token=per_token)
    x = _zero_padding(per_token, mask)
    m = mask.to(x.dtype)
    n = max(mask.shape[0], 1)
    if mode == "token_mean":
        return x.sum() / m.sum().clamp(min=1)
    if mode == "seq_mean_token_mean":
        return (x.sum(-1) / m.sum(-1).clamp(min=1)).sum() / n
    if mode == "seq_mean_token_sum":
        return x.sum() / n
    length = mask.shape[1] if norm_length is None else norm_length
    if length < 1:
        raise ValueError(f"norm_length must be >= 1, got {length}")
    return x.sum() / (n * length)


def policy_gradient_loss(
    logprobs: Tensor, advantages: Tensor, mask: Tensor, aggregation: str = "token_mean"
) -> LossOutput:
    """REINFORCE surrogate: loss = aggregate(-A_t · log π(w_t | W_{0,t-1})).

    Its gradient is -Σ_t A_t ∇log π, the (Trajectory) Policy Gradient Theorem estimator
    (https://arxiv.org/abs/2506.02553); with ``seq_mean_token_sum`` it is unbiased for response
    rewards, the other modes re-weight tokens by 1/length.
    """
    _check_mask(mask, logprobs=logprobs)
    adv = _token_advantages(advantages, mask)
    loss = aggregate(-adv * logprobs, mask, aggregation)
    metrics = {"advantage_mean": masked_mean(adv, mask), "logprob_mean": masked_mean(logprobs.detach(), mask)}
    return LossOutput(loss=loss, metrics=metrics)


def clipped_surrogate_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    aggregation: str = "token_mean",
    dual_clip: float | None = None,
) -> LossOutput:
    """PPO: ℓ_t = max(-A_t ρ_t, -A_t clip(ρ_t, 1-ε_low, 1+ε_high)), ρ_t = π/π_old; loss = aggregate(ℓ).

    Schulman et al. 2017, https://arxiv.org/abs/1707.06347; asymmetric "clip-higher" ε_high from DAPO
    (https://arxiv.org/abs/2503.14476). Optional dual clip c > 1 (Ye et al. 2020,
    https://arxiv.org/abs/1912.09729): for A_t < 0, ℓ_t = min(ℓ_t, -c·A_t). Metrics: ``clip_frac_low``
    / ``clip_frac_high`` / ``clip_frac`` (share of tokens whose clipped term is active),
    ``dual_clip_frac``, ``approx_kl`` (k3 estimate of KL(π_old‖π)), ``ratio_mean``, ``ratio_max``.
    """
    _check_mask(mask, logprobs=logprobs, old_logprobs=old_logprobs)
    if not (0.0 <= clip_low < 1.0) or clip_high < 0.0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got clip_low={clip_low}, clip_high={clip_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")
    adv = _token_advantages(advantages, mask)
    log_ratio = _zero_padding(logprobs - old_logprobs.detach(), mask).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    ratio = log_ratio.exp()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    dual_active = torch.zeros_like(mask, dtype=torch.bool)
    if dual_clip is not None:
        dual_active = (adv < 0) & (per_token > -dual_clip * adv)
        per_token = torch.where(dual_active, -dual_clip * adv, per_token)
    loss = aggregate(per_token, mask, aggregation)
    return LossOutput(loss=loss, metrics=_clip_metrics(ratio, log_ratio, adv, mask, clip_low, clip_high, dual_active))


@torch.no_grad()
def _clip_metrics(
    ratio: Tensor, log_ratio: Tensor, adv: Tensor, mask: Tensor, clip_low: float, clip_high: float, dual_active: Tensor
) -> dict[str, Tensor]:
    """Token shares where each clip is active, k3 KL(π_old‖π) = E[ρ - 1 - log ρ], ratio statistics."""
    real = mask.bool()
    low = (ratio < 1.0 - clip_low) & (adv < 0) & real
    high = (ratio > 1.0 + clip_high) & (adv > 0) & real
    return {
        "clip_frac_low": masked_mean(low.float(), mask),
        "clip_frac_high": masked_mean(high.float(), mask),
        "clip_frac": masked_mean((low | high).float(), mask),
        "dual_clip_frac": masked_mean((dual_active & real).float(), mask),
        "approx_kl": masked_mean(ratio - 1.0 - log_ratio, mask),
        "ratio_mean": masked_mean(ratio, mask),
        "ratio_max": _zero_padding(ratio, mask).max() if real.any() else ratio.new_zeros(()),
    }


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: float | None = 0.2,
    aggregation: str = "token_mean",
) -> LossOutput:
    """Clipped value loss: ℓ_t = ½ max((V_t - R_t)², (V_old + clip(V_t - V_old, ±ε) - R_t)²); loss = aggregate(ℓ).

    PPO value clipping as in OpenAI baselines / TRL (https://arxiv.org/abs/1707.06347); ``clip=None``
    gives the plain ½(V - R)². Metrics: ``value_clip_frac``, ``explained_variance``, ``value_mean``.
    """
    _check_mask(mask, values=values, old_values=old_values, returns=returns)
    if clip is not None and clip <= 0:
        raise ValueError(f"clip must be > 0 or None, got {clip}")
    returns = returns.detach()
    err = (values - returns) ** 2
    clipped_active = torch.zeros_like(mask, dtype=torch.bool)
    if clip is not None:
        old = old_values.detach()
        v_clipped = old + (values - old).clamp(-clip, clip)
        err_clipped = (v_clipped - returns) ** 2
        clipped_active = err_clipped > err
        err = torch.maximum(err, err_clipped)
    loss = aggregate(0.5 * err, mask, aggregation)
    with torch.no_grad():
        metrics = {
            "value_clip_frac": masked_mean((clipped_active & mask.bool()).float(), mask),
            "explained_variance": explained_variance(values, returns, mask),
            "value_mean": masked_mean(_zero_padding(values, mask), mask),
        }
    return LossOutput(loss=loss, metrics=metrics)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """EV = 1 - Var(R - V) / Var(R) over the real tokens (population variances); NaN if Var(R) = 0.

    1 is a perfect critic, 0 no better than a constant, < 0 worse (as Stable-Baselines3 / TRL).
    """
    _check_mask(mask, values=values, returns=returns)
    with torch.no_grad():
        v, r = _zero_padding(values.detach(), mask), _zero_padding(returns.detach(), mask)
        var_r = masked_var(r, mask)
        if var_r == 0:
            return torch.tensor(float("nan"), dtype=r.dtype, device=r.device)
        return 1.0 - masked_var(r - v, mask) / var_r

