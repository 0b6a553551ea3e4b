"""Policy-gradient surrogates (PPO / GSPO / CISPO / SAPO), the value loss and the common aggregation modes.

All inputs are (N, L) per-token tensors with a right-padded ``mask`` (1 = real completion token);
padded entries are ignored even when they hold NaN or inf, in the value AND the gradient (every input
is selected with ``torch.where`` before any arithmetic, so no NaN·0 reaches autograd). Advantages may be
(N,) (one per response) or (N, L) (per token) and are treated as constants (detached).

Every algorithm module trains through :func:`clipped_surrogate_loss` (``RLModule.compute_loss``), REINFORCE, RLOO
and ReMax included: on the first pass over a rollout the ratio is 1, where the clipped surrogate's gradient is
exactly :func:`policy_gradient_loss`'s, -A ∇log π (tested: ``test_clipped_surrogate_on_policy_equals_policy_gradient``),
and a further epoch or minibatch (``update.epochs``/``num_minibatches`` > 1) is then clipped as in PPO instead of
silently off-policy. :func:`policy_gradient_loss` is the plain estimator that the theory check
(:mod:`lightning_trepo.theory.estimators`) differentiates.
"""
from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from lightning_trepo.ops import check_mask, masked_mean, masked_var
from lightning_trepo.types import LossOutput

Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"]
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)
ImportanceLevel = Literal["token", "sequence"]
IMPORTANCE_LEVELS: tuple[str, ...] = get_args(ImportanceLevel)
PolicyLoss = Literal["ppo", "gspo", "cispo", "sapo"]
POLICY_LOSSES: tuple[str, ...] = get_args(PolicyLoss)
MAX_LOG_RATIO = 20.0  # exp(±20) keeps ratios finite; as verl


def _zero_padding(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.bool(), x, torch.zeros_like(x))


def _token_advantages(advantages: Tensor, mask: Tensor) -> Tensor:
    """(N,) or (N, L) -> (N, L), detached, 0 on padding."""
    if advantages.dim() == 1 and advantages.shape[0] == mask.shape[0]:
        return _zero_padding(advantages.detach()[:, None].expand(mask.shape), mask)
    if advantages.shape == mask.shape:
        return _zero_padding(advantages.detach(), mask)
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
    check_mask(mask, per_token=per_token)
    x = _zero_padding(per_token, mask)
    if mode == "seq_mean_token_mean":
        x = x / mask.to(x.dtype).sum(-1, keepdim=True).clamp(min=1)
    return x.sum() / aggregate_denominator(mask, mode, norm_length)


def aggregate_denominator(mask: Tensor, mode: str = "token_mean", norm_length: int | None = None) -> Tensor | float:
    """What :func:`aggregate` divides the (for ``seq_mean_token_mean`` row-normalised) token sum by: Σ m
    (``token_mean``, at least 1; a tensor), N (``seq_mean_*``), N·L (``seq_mean_token_sum_norm``). Rows appended to
    a batch (TRePO's continuation rows) raise it; rescaling the batch's advantages by D(all rows) / D(original rows)
    puts the appended rows' loss terms ON TOP of the original rows' mean instead of diluting it."""
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation mode {mode!r}; valid: {', '.join(AGGREGATIONS)}")
    n = max(mask.shape[0], 1)
    if mode == "token_mean":
        return mask.sum().clamp(min=1)  # a tensor: no device sync in the loss
    if mode in ("seq_mean_token_mean", "seq_mean_token_sum"):
        return float(n)
    length = mask.shape[1] if norm_length is None else norm_length
    if length < 1:
        raise ValueError(f"norm_length must be >= 1, got {length}")
    return float(n * length)


def policy_gradient_loss(
    logprobs: Tensor, advantages: Tensor, mask: Tensor, aggregation: str = "token_mean", norm_length: int | None = None
) -> LossOutput:
    """REINFORCE surrogate: loss = aggregate(-A_t · log π(w_t | W_{0,t-1})).

    Its gradient is -Σ_t A_t ∇log π, the (Trajectory) Policy Gradient Theorem estimator
    (https://arxiv.org/abs/2506.02553); with ``seq_mean_token_sum`` it is unbiased for response
    rewards, the other modes re-weight tokens by 1/length.
    """
    check_mask(mask, logprobs=logprobs)
    adv, logprobs = _token_advantages(advantages, mask), _zero_padding(logprobs, mask)
    loss = aggregate(-adv * logprobs, mask, aggregation, norm_length)
    metrics = {"advantage_mean": masked_mean(adv, mask), "logprob_mean": masked_mean(logprobs.detach(), mask)}
    return LossOutput(loss=loss, metrics=metrics)


def importance_log_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor, level: str = "token") -> Tensor:
    """log ρ_t, clamped to ±20 and 0 on padding. (N, L) -> (N, L).

    - ``token`` (PPO): log ρ_t = log π(w_t) - log π_old(w_t).
    - ``sequence`` (GSPO, Zheng et al. 2025, https://arxiv.org/abs/2507.18071, "GSPO-token" form):
      log ρ_t = sg[(1/T_i) Σ_s (log π(w_s) - log π_old(w_s))] + log π(w_t) - sg[log π(w_t)]: every token of
      response i carries the length-normalised sequence ratio s_i, and ∇ρ_t = s_i ∇log π(w_t). With one
      advantage per response and ``seq_mean_token_mean`` this is GSPO's s_i·A_i in value and gradient
      (verl ``loss_mode=gspo``; TRL ``importance_sampling_level=sequence`` gives the same gradient).
    """
    if level not in IMPORTANCE_LEVELS:
        raise ValueError(f"unknown importance sampling level {level!r}; valid: {', '.join(IMPORTANCE_LEVELS)}")
    logprobs = _zero_padding(logprobs, mask)
    log_ratio = _zero_padding(logprobs - old_logprobs.detach(), mask)
    if level == "sequence":
        seq = log_ratio.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
        log_ratio = _zero_padding(seq.detach() + (logprobs - logprobs.detach()), mask)
    return log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)


def clipped_surrogate_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    aggregation: str = "token_mean",
    dual_clip: float | None = None,
    importance_level: str = "token",
    norm_length: int | None = None,
) -> LossOutput:
    """PPO: ℓ_t = max(-A_t ρ_t, -A_t clip(ρ_t, 1-ε_low, 1+ε_high)), ρ_t = π/π_old; loss = aggregate(ℓ).

    Schulman et al. 2017, https://arxiv.org/abs/1707.06347; asymmetric "clip-higher" ε_high from DAPO
    (https://arxiv.org/abs/2503.14476). Optional dual clip c > 1 (Ye et al. 2020,
    https://arxiv.org/abs/1912.09729; verl ``clip_ratio_c``, TRL ``delta`` caps ρ·A the same way for A < 0):
    for A_t < 0, ℓ_t = min(ℓ_t, -c·A_t). ``importance_level="sequence"`` is GSPO (see
    :func:`importance_log_ratio`). Metrics: ``clip_frac_low`` / ``clip_frac_high`` / ``clip_frac`` (share of
    tokens whose clipped term is active), ``dual_clip_frac``, ``approx_kl`` (k3 estimate of KL(π_old‖π)),
    ``ratio_mean``, ``ratio_max``.
    """
    check_mask(mask, logprobs=logprobs, old_logprobs=old_logprobs)
    if not (0.0 <= clip_low < 1.0) or clip_high < 0.0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got clip_low={clip_low}, clip_high={clip_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")
    adv = _token_advantages(advantages, mask)
    log_ratio = importance_log_ratio(logprobs, old_logprobs, mask, importance_level)
    ratio = log_ratio.exp()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    dual_active = torch.zeros_like(mask, dtype=torch.bool)
    if dual_clip is not None:
        dual_active = (adv < 0) & (per_token > -dual_clip * adv)
        per_token = torch.where(dual_active, -dual_clip * adv, per_token)
    loss = aggregate(per_token, mask, aggregation, norm_length)
    return LossOutput(loss=loss, metrics=_clip_metrics(ratio, log_ratio, adv, mask, clip_low, clip_high, dual_active))


def cispo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    aggregation: str = "token_mean",
    norm_length: int | None = None,
) -> LossOutput:
    """CISPO: ℓ_t = -sg[clip(ρ_t, 1-ε_low, 1+ε_high)] · A_t · log π(w_t); loss = aggregate(ℓ).

    MiniMax-M1, https://arxiv.org/abs/2506.13585 (eq. 4-5), as verl ``loss_mode=cispo``: the clipped
    importance weight is a constant, so every token keeps its gradient -ŵ_t A_t ∇log π (PPO zeroes the
    clipped ones). TRL ``loss_type=cispo`` caps ρ from above only; ``clip_low`` close to 1 approximates it.
    Metrics as :func:`clipped_surrogate_loss`, ``clip_frac`` = share of tokens whose weight was clipped.
    """
    check_mask(mask, logprobs=logprobs, old_logprobs=old_logprobs)
    if not (0.0 <= clip_low < 1.0) or clip_high < 0.0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got clip_low={clip_low}, clip_high={clip_high}")
    adv = _token_advantages(advantages, mask)
    log_ratio = importance_log_ratio(logprobs, old_logprobs, mask)
    ratio = log_ratio.exp()
    weight = ratio.detach().clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = aggregate(-weight * adv * _zero_padding(logprobs, mask), mask, aggregation, norm_length)
    no_dual = torch.zeros_like(mask, dtype=torch.bool)
    metrics = _clip_metrics(ratio, log_ratio, adv, mask, clip_low, clip_high, no_dual, sign_aware=False)
    return LossOutput(loss=loss, metrics=metrics)


def sapo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
    aggregation: str = "token_mean",
    norm_length: int | None = None,
) -> LossOutput:
    """SAPO: ℓ_t = -f(ρ_t) · A_t with the soft gate f(ρ) = (4/τ) σ(τ(ρ - 1)), τ = τ_pos if A_t > 0 else τ_neg.

    Soft Adaptive Policy Optimization, https://arxiv.org/abs/2511.20347 (verl ``loss_mode=sapo``, TRL
    ``loss_type=sapo``; τ_pos = 1, τ_neg = 1.05 as there): a smooth trust region instead of the hard clip.
    f(1) = 2/τ and f'(1) = 1, so on-policy the gradient is exactly the policy gradient -A ∇log π.
    Metrics: ``gate_mean`` (mean f'(ρ) = 4σ(1-σ), the share of the on-policy gradient kept), ``approx_kl``,
    ``ratio_mean``, ``ratio_max``.
    """
    check_mask(mask, logprobs=logprobs, old_logprobs=old_logprobs)
    if tau_pos <= 0 or tau_neg <= 0:
        raise ValueError(f"need tau_pos > 0 and tau_neg > 0, got tau_pos={tau_pos}, tau_neg={tau_neg}")
    adv = _token_advantages(advantages, mask)
    log_ratio = importance_log_ratio(logprobs, old_logprobs, mask)
    ratio = log_ratio.exp()
    tau = torch.where(adv > 0, torch.full_like(adv, tau_pos), torch.full_like(adv, tau_neg))
    gate = torch.sigmoid(tau * (ratio - 1.0))
    loss = aggregate(-(4.0 / tau) * gate * adv, mask, aggregation, norm_length)
    with torch.no_grad():
        metrics = {"gate_mean": masked_mean(4.0 * gate * (1.0 - gate), mask),
                   "approx_kl": masked_mean(ratio - 1.0 - log_ratio, mask), "ratio_mean": masked_mean(ratio, mask),
                   "ratio_max": _zero_padding(ratio, mask).max() if mask.bool().any() else ratio.new_zeros(())}
    return LossOutput(loss=loss, metrics=metrics)


def surrogate_loss(
    kind: str,
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    sapo_tau: tuple[float, float] = (1.0, 1.05),
    aggregation: str = "token_mean",
    norm_length: int | None = None,
) -> LossOutput:
    """The policy loss named by ``kind`` (verl ``policy_loss.loss_mode``): ``ppo`` and ``gspo``
    (:func:`clipped_surrogate_loss`, token or sequence ratio, optional dual clip), ``cispo`` (:func:`cispo_loss`),
    ``sapo`` (:func:`sapo_loss`, ``sapo_tau`` = (τ_pos, τ_neg)). All take (N, L) inputs and return a LossOutput."""
    if kind not in POLICY_LOSSES:
        raise ValueError(f"unknown policy loss {kind!r}; valid: {', '.join(POLICY_LOSSES)}")
    if kind == "cispo":
        return cispo_loss(logprobs, old_logprobs, advantages, mask, clip_low, clip_high, aggregation, norm_length)
    if kind == "sapo":
        return sapo_loss(logprobs, old_logprobs, advantages, mask, *sapo_tau, aggregation, norm_length)
    level = "sequence" if kind == "gspo" else "token"
    return clipped_surrogate_loss(logprobs, old_logprobs, advantages, mask, clip_low, clip_high, aggregation,
                                  dual_clip, level, norm_length)


@torch.no_grad()
def _clip_metrics(
    ratio: Tensor, log_ratio: Tensor, adv: Tensor, mask: Tensor, clip_low: float, clip_high: float, dual_active: Tensor,
    sign_aware: bool = True,
) -> dict[str, Tensor]:
    """Token shares where each clip is active, k3 KL(π_old‖π) = E[ρ - 1 - log ρ], ratio statistics.

    ``sign_aware``: PPO's clip acts only when it lowers the objective (ρ low with A < 0, ρ high with A > 0);
    CISPO clips the weight whatever the sign."""
    real = mask.bool()
    low, high = (ratio < 1.0 - clip_low) & real, (ratio > 1.0 + clip_high) & real
    if sign_aware:
        low, high = low & (adv < 0), high & (adv > 0)
    return {
        "clip_frac_low": masked_mean(low.float(), mask),
        "clip_frac_high": masked_mean(high.float(), mask),
        "clip_frac": masked_mean((low | high).float(), mask),
        "dual_clip_frac": masked_mean((dual_active & real).float(), mask),
        "approx_kl": masked_mean(ratio - 1.0 - log_ratio, mask),
        "ratio_mean": masked_mean(ratio, mask),
        "ratio_max": _zero_padding(ratio, mask).max() if real.any() else ratio.new_zeros(()),
    }


def truncated_filtered_mask(mask: Tensor, truncated: Tensor) -> Tensor:
    """DAPO overlong filtering: m'_{i,t} = m_{i,t}·[response i ended with EOS]; (N, L), (N,) bool -> (N, L).

    Yu et al. 2025, https://arxiv.org/abs/2503.14476 §3.4 (TRL ``mask_truncated_completions``): a
    truncated response is not a sample of a finished answer, so its tokens leave the loss; the row still
    counts in per-row averages (its loss is 0), as in TRL.
    """
    if truncated.shape != (mask.shape[0],):
        raise ValueError(f"truncated must have shape ({mask.shape[0]},), got {tuple(truncated.shape)}")
    return torch.where(truncated.bool()[:, None], torch.zeros_like(mask), mask)


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: float | None = 0.2,
    aggregation: str = "token_mean",
    norm_length: int | None = None,
) -> LossOutput:
    """Clipped value loss: ℓ_t = ½ max((V_t - R_t)², (V_old + clip(V_t - V_old, ±ε) - R_t)²); loss = aggregate(ℓ).

    PPO value clipping as in OpenAI baselines / TRL (https://arxiv.org/abs/1707.06347); ``clip=None``
    gives the plain ½(V - R)². Metrics: ``value_clip_frac`` (share of tokens with |V - V_old| > ε whose
    clipped error is the larger one), ``explained_variance``, ``value_mean``. Inside the clip range the
    clipped value is V itself (not V_old + (V - V_old), which can differ from V by an ulp and count as clipped).
    """
    check_mask(mask, values=values, old_values=old_values, returns=returns)
    if clip is not None and clip <= 0:
        raise ValueError(f"clip must be > 0 or None, got {clip}")
    values, returns = _zero_padding(values, mask), _zero_padding(returns.detach(), mask)
    err = (values - returns) ** 2
    clipped_active = torch.zeros_like(mask, dtype=torch.bool)
    if clip is not None:
        old = _zero_padding(old_values.detach(), mask)
        outside = (values - old).abs() > clip
        v_clipped = torch.where(outside, old + (values - old).clamp(-clip, clip), values)
        err_clipped = (v_clipped - returns) ** 2
        clipped_active = outside & (err_clipped > err)
        err = torch.maximum(err, err_clipped)
    loss = aggregate(0.5 * err, mask, aggregation, norm_length)
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
    check_mask(mask, values=values, returns=returns)
    with torch.no_grad():
        v, r = _zero_padding(values.detach(), mask), _zero_padding(returns.detach(), mask)
        var_r = masked_var(r, mask)
        if var_r == 0:
            return torch.tensor(float("nan"), dtype=r.dtype, device=r.device)
        return 1.0 - masked_var(r - v, mask) / var_r

