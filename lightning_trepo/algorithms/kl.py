"""Per-token KL estimators between the policy and a reference, from samples of the policy.

With samples w ~ π and Δ = log π_ref(w) - log π(w) (so ρ = π_ref/π = e^Δ), the three estimators of
KL(π‖π_ref) from http://joschu.net/blog/kl-approx.html are k1 = -Δ (unbiased, high variance, can be
negative), k2 = ½Δ² (biased, low variance), k3 = e^Δ - Δ - 1 (unbiased, >= 0, low variance).
"""
from __future__ import annotations

import torch
from torch import Tensor

KL_KINDS = ("k1", "k2", "k3")


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, kind: str = "k3", clamp: float | None = None) -> Tensor:
    """Per-token KL(π‖π_ref) estimate: k1 = log π - log π_ref; k2 = ½(log π - log π_ref)²;
    k3 = e^Δ - Δ - 1, Δ = log π_ref - log π.

    Schulman, http://joschu.net/blog/kl-approx.html (k3 is the GRPO choice, https://arxiv.org/abs/2402.03300).
    ``clamp`` optionally clips Δ to [-clamp, clamp] before k3's exponential (as verl's low_var_kl).
    Same shape in and out; apply the mask when aggregating.
    """
    if kind not in KL_KINDS:
        raise ValueError(f"unknown KL estimator {kind!r}; valid: {', '.join(KL_KINDS)}")
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} "
                         "differ in shape")
    delta = ref_logprobs - logprobs
    if kind == "k1":
        return -delta
    if kind == "k2":
        return 0.5 * delta**2
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
