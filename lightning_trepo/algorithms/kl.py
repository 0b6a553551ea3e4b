"""Per-token KL estimators between the policy and a reference, from samples of the policy; adaptive KL coefficient.

With samples w ~ π and Δ = log π_ref(w) - log π(w) (so ρ = π_ref/π = e^Δ), the three estimators of
KL(π‖π_ref) from http://joschu.net/blog/kl-approx.html are k1 = -Δ (unbiased, high variance, can be
negative), k2 = ½Δ² (biased, low variance), k3 = e^Δ - Δ - 1 (unbiased, >= 0, low variance).

Names follow verl's ``kl_penalty`` (``algorithm.kl_penalty`` / ``actor.kl_loss_type``):

- ``k1``, ``k2``, ``k3`` as above; ``k3`` is NOT clamped here (verl's ``k3`` is its ``low_var_kl``);
- ``low_var_kl``: k3 with Δ clamped to [-20, 20] and the value clamped to [-10, 10], exactly verl's
  (the gradient is 0 where either clamp is active);
- ``abs``: |log π - log π_ref| (verl ``abs``);
- a ``+`` suffix (``k1+``, ``k3+``, ``low_var_kl+``, ``abs+``) is the straight-through form: the value of the
  named estimator, the gradient of k2 (as verl). With the samples held fixed, E_π[∇k2] = E_π[(log π - log π_ref)
  ∇log π] is exactly ∇KL(π‖π_ref), while E_π[∇k1] = 0 and E_π[∇k3] = ∇KL(π_ref‖π) (the reverse direction).
"""
from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

KLKind = Literal["k1", "k2", "k3", "low_var_kl", "abs", "k1+", "k3+", "low_var_kl+", "abs+"]
KL_KINDS: tuple[str, ...] = get_args(KLKind)
LOW_VAR_KL_LOG_CLAMP = 20.0  # verl: Δ clamped to ±20 before the exponential
LOW_VAR_KL_VALUE_CLAMP = 10.0  # verl: the k3 value clamped to ±10 (so at most 10)


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, kind: str = "k3", clamp: float | None = None) -> Tensor:
    """Per-token KL(π‖π_ref) estimate: k1 = log π - log π_ref; k2 = ½(log π - log π_ref)²;
    k3 = e^Δ - Δ - 1, Δ = log π_ref - log π; ``low_var_kl`` = min(k3(clamp(Δ, ±20)), 10); ``abs`` = |k1|;
    ``<kind>+`` = value of <kind>, gradient of k2 (straight through).

    Schulman, http://joschu.net/blog/kl-approx.html (k3 is the GRPO choice, https://arxiv.org/abs/2402.03300);
    verl ``kl_penalty``. ``clamp`` optionally clips Δ to [-clamp, clamp] before k3's exponential (only the
    log-ratio: verl's ``low_var_kl`` also caps the value, use that kind to match it). Same shape in and out;
    apply the mask when aggregating.
    """
    if kind not in KL_KINDS:
        raise ValueError(f"unknown KL estimator {kind!r}; valid: {', '.join(KL_KINDS)}")
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} "
                         "differ in shape")
    base = kind.removesuffix("+")
    value = _forward(logprobs, ref_logprobs, base, clamp)
    if not kind.endswith("+"):
        return value
    k2 = 0.5 * (logprobs - ref_logprobs) ** 2
    return k2 - k2.detach() + value.detach()


def _forward(logprobs: Tensor, ref_logprobs: Tensor, kind: str, clamp: float | None) -> Tensor:
    delta = ref_logprobs - logprobs
    if kind == "k1":
        return -delta
    if kind == "k2":
        return 0.5 * delta**2
    if kind == "abs":
        return delta.abs()
    if kind == "low_var_kl":
        delta = delta.clamp(-LOW_VAR_KL_LOG_CLAMP, LOW_VAR_KL_LOG_CLAMP)
        return (torch.expm1(delta) - delta).clamp(-LOW_VAR_KL_VALUE_CLAMP, LOW_VAR_KL_VALUE_CLAMP)
    if clamp is not None:
        delta = delta.clamp(-clamp, clamp)
    return torch.expm1(delta) - delta


def kl_penalized_rewards(rewards: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """r'_i = r_i - β Σ_t m_t kl_t: a sequence-level KL penalty folded into the reward (RLOO / REINFORCE style).

    Ahmadian et al. 2024, https://arxiv.org/abs/2402.14740. (N,), (N, L), (N, L) -> (N,); the KL is
    treated as part of the reward, so it is detached.
    """
    if kl.shape != mask.shape or rewards.shape != (mask.shape[0],):
        raise ValueError(f"need rewards (N,), kl and mask (N, L); got {tuple(rewards.shape)}, {tuple(kl.shape)}, "
                         f"{tuple(mask.shape)}")
    per_seq = torch.where(mask.bool(), kl.detach(), torch.zeros_like(kl)).sum(-1)
    return rewards - kl_coef * per_seq


def adaptive_kl_coef(coef: float, current_kl: float, target_kl: float, horizon: int, n_steps: int) -> float:
    """Adaptive KL controller: β ← β·(1 + clip(KL/KL_target - 1, -0.2, 0.2)·n_steps/horizon).

    Ziegler et al. 2019, https://arxiv.org/abs/1909.08593 §2.2 (verl ``kl_ctrl.type=adaptive``, TRL's
    ``AdaptiveKLController``): the coefficient grows while the measured KL is above the target and
    shrinks below it, by at most 20% per ``horizon`` samples. ``n_steps`` = samples in this update.
    A non-finite ``current_kl`` leaves β unchanged.
    """
    if target_kl <= 0 or horizon < 1 or n_steps < 0 or coef < 0:
        raise ValueError(f"need target_kl > 0, horizon >= 1, n_steps >= 0, coef >= 0; got target_kl={target_kl}, "
                         f"horizon={horizon}, n_steps={n_steps}, coef={coef}")
    if not math.isfinite(current_kl):
        return coef
    error = min(max(current_kl / target_kl - 1.0, -0.2), 0.2)
    return coef * (1.0 + error * n_steps / horizon)
