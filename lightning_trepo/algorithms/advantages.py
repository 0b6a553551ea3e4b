"""Advantage estimators: pure tensor functions, no state.

Shapes follow :mod:`lightning_trepo.types`: ``N = B * G`` samples, the G samples of one prompt are
contiguous (sample ``n`` belongs to group ``n // G``), ``L`` padded completion tokens, ``mask`` is
1 on real completion tokens (EOS included) and right padded.

Group statistics are computed on deviations from the group's first reward (``d_i = r_i - r_0``),
which is the same maths but makes a constant group give *exact* zeros in floating point
(``(0.1 + 0.1 + 0.1) / 3 != 0.1`` would otherwise leak ±1e-17 advantages).
"""
from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor

from lightning_trepo.ops import check_mask, masked_whiten

GRPOScale = Literal["group", "batch", "none"]
GRPO_SCALES: tuple[str, ...] = get_args(GRPOScale)


def _check_rewards(rewards: Tensor, name: str = "rewards") -> None:
    if not isinstance(rewards, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(rewards).__name__}")
    if rewards.dim() != 1:
        raise ValueError(f"{name} must have shape (N,), got {tuple(rewards.shape)}")
    if not rewards.is_floating_point():
        raise TypeError(f"{name} must be a float tensor, got {rewards.dtype}")


def _grouped(rewards: Tensor, group_size: int, min_size: int = 1) -> Tensor:
    """(N,) -> (B, G) after validating that N is a multiple of ``group_size``."""
    _check_rewards(rewards)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < min_size:
        raise ValueError(f"group_size must be an int >= {min_size}, got {group_size!r}")
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"number of samples N={rewards.numel()} is not divisible by group_size={group_size}; "
            "the G samples of each prompt must be contiguous"
        )
    return rewards.view(-1, group_size)


def _deviations(groups: Tensor) -> Tensor:
    """d_i = r_i - r_0 per group (exact zeros for a constant group)."""
    return groups - groups[:, :1]


def reinforce_advantages(rewards: Tensor) -> Tensor:
    """REINFORCE with the response reward as the return: A_i = r_i.

    Unbiased for the token-level policy gradient (Trajectory Policy Gradient Theorem, Theorem 1 of
    https://arxiv.org/abs/2506.02553). Returns a copy, (N,) -> (N,).
    """
    _check_rewards(rewards)
    return rewards.clone()


def rloo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """RLOO: A_i = r_i - 1/(G-1) Σ_{j≠i} r_j within the sample's group (= G/(G-1) (r_i - mean)).

    The baseline excludes the sample itself, so the estimator stays unbiased.
    Ahmadian et al. 2024, https://arxiv.org/abs/2402.14740. Needs ``group_size >= 2``.
    """
    d = _deviations(_grouped(rewards, group_size, min_size=2))
    others = (d.sum(dim=1, keepdim=True) - d) / (group_size - 1)
    return (d - others).reshape(-1)


def leave_one_out_mean(rewards: Tensor, group_size: int) -> Tensor:
    """Û_i = 1/(G-1) Σ_{j≠i} r_j, the RLOO baseline; TRePO's default Û(0) (design.md §5).

    https://arxiv.org/abs/2402.14740. Equals ``rewards - rloo_advantages(rewards, group_size)``.
    """
    return rewards - rloo_advantages(rewards, group_size)


def grpo_advantages(rewards: Tensor, group_size: int, scale: str = "group", eps: float = 1e-6) -> Tensor:
    """GRPO: A_i = (r_i - mean_group(r)) / (std + eps); Shao et al. 2024, https://arxiv.org/abs/2402.03300.

    ``scale``: ``"group"`` divides by the std of the sample's group, ``"batch"`` by the std of all N
    rewards (Dr. GRPO / TRL ``scale_rewards="batch"``), ``"none"`` does not divide (Dr. GRPO,
    https://arxiv.org/abs/2503.20783).

    The std is the **sample** std (Bessel, divisor G-1), i.e. ``torch.std`` as in TRL, OpenRLHF and
    verl. Chosen deliberately: with a fixed G the two choices differ by the constant factor
    sqrt((G-1)/G), which changes no gradient direction but does change the effective step size and the
    meaning of ``eps`` and of clip ranges, so matching those libraries keeps their tuned
    hyper-parameters transferable. A constant group gives exact zeros (0 / (0 + eps)).

    Note: the mean includes r_i itself, so with ``scale="none"`` the expected gradient is exactly
    (G-1)/G times the true one (see ``lightning_trepo.theory``); with a std division it is biased.
    """
    if scale not in GRPO_SCALES:
        raise ValueError(f"unknown GRPO scale {scale!r}; valid: {', '.join(GRPO_SCALES)}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    d = _deviations(_grouped(rewards, group_size, min_size=2))
    centred = d - d.mean(dim=1, keepdim=True)
    if scale == "none":
        return centred.reshape(-1)
    if scale == "group":
        std = d.std(dim=1, keepdim=True)
    else:
        std = (rewards - rewards[0]).std()
    return (centred / (std + eps)).reshape(-1)


def remax_advantages(rewards: Tensor, baseline_rewards: Tensor, group_size: int | None = None) -> Tensor:
    """ReMax: A_i = r_i - r(greedy response of sample i's prompt); Li et al. 2023, https://arxiv.org/abs/2310.10505.

    ``baseline_rewards`` is either (N,), already one per sample, or (B,), one greedy reward per prompt,
    which is repeated G times (``group_size``; inferred as N // B when omitted). The greedy response
    does not depend on the sampled ones, so the baseline keeps the gradient unbiased.
    """
    _check_rewards(rewards)
    _check_rewards(baseline_rewards, "baseline_rewards")
    n, b = rewards.numel(), baseline_rewards.numel()
    if group_size is not None:
        num_prompts = _grouped(rewards, group_size).shape[0]
        if b not in (n, num_prompts):
            raise ValueError(f"baseline_rewards has {b} entries; expected N={n} or B={num_prompts} "
                             f"(group_size={group_size})")
    elif b == 0 or n % b != 0:
        raise ValueError(f"baseline_rewards has {b} entries; expected N={n} (one per sample) or B dividing N")
    if b == n:
        return rewards - baseline_rewards
    return rewards - baseline_rewards.repeat_interleave(n // b)


def gae(
    token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """GAE: δ_t = r_t + γ V_{t+1} - V_t, A_t = Σ_k (γλ)^k δ_{t+k}; returns R_t = A_t + V_t.

    Schulman et al. 2015, https://arxiv.org/abs/1506.02438. (N, L) inputs, right-padded ``mask``;
    the value after the last real token is 0 (the episode ends at EOS or truncation); advantages and
    returns are 0 on padding, and padded rewards/values are ignored. γ = 1 keeps the gradient of an
    undiscounted response reward unbiased (https://arxiv.org/abs/2506.02553).
    """
    check_mask(mask, token_rewards=token_rewards, values=values)
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must lie in [0, 1], got gamma={gamma}, lam={lam}")
    m = mask.to(values.dtype)
    r = torch.where(mask.bool(), token_rewards, torch.zeros_like(token_rewards))
    v = torch.where(mask.bool(), values, torch.zeros_like(values))
    adv = torch.zeros_like(v)
    next_adv = torch.zeros_like(v[:, 0])
    next_value = torch.zeros_like(v[:, 0])
    for t in reversed(range(v.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]
        next_adv = (delta + gamma * lam * next_adv) * m[:, t]
        adv[:, t] = next_adv
        next_value = v[:, t]
    return adv, (adv + v) * m


def segment_advantages(anchor_values: Tensor, anchor_positions: Tensor, mask: Tensor) -> Tensor:
    """TRePO: token t (1-based) with s_{j-1} < t <= s_j gets A_t = Û(s_j) - Û(s_{j-1}); 0 on padding.

    Theorem 2 of https://arxiv.org/abs/2506.02553 with U estimated at anchors only. ``anchor_positions``
    (N, M+2) integer, non-decreasing, first column 0, last column T_i = ``mask[i].sum()`` (padding
    anchors repeat T_i; empty segments are skipped); ``anchor_values`` (N, M+2) holds Û at those
    positions. Unbiased when the anchors are stopping times; with anchors 0, 1, ..., T it is exactly
    A_t = U(W_{0,t}) - U(W_{0,t-1}). Vectorised with ``searchsorted``. Returns (N, L).
    """
    check_mask(mask)
    if anchor_positions.dim() != 2 or anchor_positions.shape[1] < 2:
        raise ValueError(f"anchor_positions must have shape (N, M+2) with M >= 0, got {tuple(anchor_positions.shape)}")
    if anchor_values.shape != anchor_positions.shape:
        raise ValueError(f"anchor_values {tuple(anchor_values.shape)} and anchor_positions "
                         f"{tuple(anchor_positions.shape)} differ")
    if anchor_positions.shape[0] != mask.shape[0]:
        raise ValueError(f"anchor_positions has {anchor_positions.shape[0]} rows, mask has {mask.shape[0]}")
    if anchor_positions.is_floating_point():
        raise TypeError("anchor_positions must be an integer tensor")
    pos = anchor_positions.long().contiguous()
    if (pos[:, 0] != 0).any():
        raise ValueError("anchor_positions[:, 0] must be 0 (the empty prefix)")
    if (pos[:, 1:] < pos[:, :-1]).any():
        raise ValueError("anchor_positions must be non-decreasing along each row")
    lengths = mask.sum(-1).long()
    if (pos[:, -1] != lengths).any():
        raise ValueError("anchor_positions[:, -1] must equal each response length T_i = mask.sum(-1)")
    n, length = mask.shape
    t = torch.arange(1, length + 1, device=pos.device).expand(n, length).contiguous()
    j = torch.searchsorted(pos, t).clamp(max=pos.shape[1] - 1)  # first anchor with s_j >= t
    diffs = anchor_values.gather(1, j) - anchor_values.gather(1, j - 1)
    return torch.where(mask.bool(), diffs, torch.zeros_like(diffs))


def token_level_rewards(rewards: Tensor, mask: Tensor, kl: Tensor | None = None, kl_coef: float = 0.0) -> Tensor:
    """r_t = -β·kl_t + RM(W)·[t = T]: the response reward on the last real token (PPO-RLHF convention).

    Ouyang et al. 2022 (https://arxiv.org/abs/2203.02155), per-token KL penalty β = ``kl_coef``;
    (N,) rewards, (N, L) mask and optional kl -> (N, L), 0 on padding.
    """
    _check_rewards(rewards)
    check_mask(mask, **({} if kl is None else {"kl": kl}))
    if rewards.shape[0] != mask.shape[0]:
        raise ValueError(f"rewards has {rewards.shape[0]} entries, mask has {mask.shape[0]} rows")
    lengths = mask.sum(-1).long()
    out = torch.zeros(mask.shape, dtype=rewards.dtype, device=rewards.device)
    has_tokens = lengths > 0
    rows = torch.nonzero(has_tokens).squeeze(-1)
    out[rows, lengths[rows] - 1] = rewards[rows]
    if kl is not None and kl_coef != 0.0:
        out = out - kl_coef * torch.where(mask.bool(), kl, torch.zeros_like(kl))
    return out


def informative_groups(rewards: Tensor, group_size: int) -> Tensor:
    """DAPO dynamic sampling's filter: keep_b = [the G rewards of prompt b are not all equal]. (N,) -> (B,) bool.

    Yu et al. 2025, https://arxiv.org/abs/2503.14476 §3.2 (verl ``filter_groups``): a group whose rewards are all
    equal has zero group-relative advantage everywhere, so it only dilutes the batch. Compared exactly (a
    deviation from the group's first reward is nonzero), so the kept groups are those with a nonzero advantage.
    A group of one is always kept (verl).
    """
    groups = _grouped(rewards, group_size)
    if group_size == 1:
        return torch.ones(groups.shape[0], dtype=torch.bool, device=rewards.device)
    return (_deviations(groups) != 0).any(dim=1)


def reinforce_pp_advantages(token_rewards: Tensor, mask: Tensor, gamma: float = 1.0, eps: float = 1e-8) -> Tensor:
    """REINFORCE++: G_t = Σ_{s>=t} γ^{s-t} r_s (reset at the end of each response), A = whiten(G) over the batch.

    Hu 2025, https://arxiv.org/abs/2501.03262 (verl ``adv_estimator=reinforce_plus_plus``): the returns of the
    token rewards (N, L) (RM(W) on the last real token, optionally a per-token KL penalty), whitened with the
    mean and the sample variance of every real token of the batch. (N, L), (N, L) -> (N, L), 0 on padding.
    Biased: the batch mean includes the sample itself and the std division rescales per batch
    (``lightning-trepo verify-estimators``).
    """
    check_mask(mask, token_rewards=token_rewards)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
    r = torch.where(mask.bool(), token_rewards, torch.zeros_like(token_rewards))
    returns = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    for t in reversed(range(r.shape[1])):
        running = r[:, t] + gamma * running * mask[:, t].to(r.dtype)
        returns[:, t] = running
    return masked_whiten(returns, mask, eps=eps)


def reinforce_pp_baseline_advantages(rewards: Tensor, mask: Tensor, group_size: int, eps: float = 1e-8) -> Tensor:
    """REINFORCE++-baseline: A_{i,t} = whiten(r_i - mean_group(r)) over every real token of the batch.

    Hu 2025, https://arxiv.org/abs/2501.03262 (verl ``adv_estimator=reinforce_plus_plus_baseline``): the group
    mean (including r_i; 0 for a group of one, as verl) is subtracted per response, the result broadcast to its
    tokens and whitened with the batch's token mean and sample variance. (N,), (N, L) -> (N, L), 0 on padding.
    Biased (mean including self, batch std division; ``lightning-trepo verify-estimators``).
    """
    check_mask(mask)
    groups = _grouped(rewards, group_size)
    if rewards.shape[0] != mask.shape[0]:
        raise ValueError(f"rewards has {rewards.shape[0]} entries, mask has {mask.shape[0]} rows")
    d = _deviations(groups)
    centred = (d - d.mean(dim=1, keepdim=True)) if group_size > 1 else groups
    scores = centred.reshape(-1, 1).expand(mask.shape)
    return masked_whiten(scores, mask, eps=eps)


def siblings_mixed(rewards: Tensor, group_size: int) -> Tensor:
    """(N,) bool: True where the OTHER G-1 rewards of sample i's group are not all equal (TRePO's gate).

    gate_i = max_{j≠i} r_j > min_{j≠i} r_j. It reads only the siblings, never r_i, so it is independent of
    sample i's response: an estimator that switches on it (TRePO's continuations where it holds, RLOO where it does
    not) keeps each branch's expectation, and anchors chosen by stopping times stay stopping times
    (https://arxiv.org/abs/2506.02553). Needs G >= 3 to ever be True.
    """
    high, low = _sibling_extremes(rewards, group_size)
    return (high > low).reshape(-1)


def siblings_unsolved(rewards: Tensor, group_size: int, threshold: float) -> Tensor:
    """(N,) bool: True where some OTHER reward of sample i's group is below ``threshold`` (TRePO's ``gate=unsolved``).

    gate_i = min_{j≠i} r_j < threshold: open where a sibling failed (mixed groups, and groups whose siblings all
    failed, where GRPO and RLOO have no signal at all), closed only where every sibling solved the prompt. Like
    :func:`siblings_mixed` it reads only the siblings, never r_i, so the estimator that switches on it stays
    unbiased. Needs G >= 2.
    """
    _, low = _sibling_extremes(rewards, group_size)
    return (low < threshold).reshape(-1)


def _sibling_extremes(rewards: Tensor, group_size: int) -> tuple[Tensor, Tensor]:
    """(B, G) each: max_{j≠i} r_j and min_{j≠i} r_j, the extremes of sample i's G-1 siblings (never r_i)."""
    groups = _grouped(rewards, group_size, min_size=2)
    g = groups.shape[1]
    others = groups.unsqueeze(1).expand(-1, g, -1)  # (B, G, G): row i holds the group, column i to be dropped
    keep = ~torch.eye(g, dtype=torch.bool, device=rewards.device)
    inf = torch.tensor(float("inf"), dtype=groups.dtype, device=groups.device)
    return torch.where(keep, others, -inf).amax(-1), torch.where(keep, others, inf).amin(-1)


def group_std_scale(rewards: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """(N,) 1 / (std_group + eps) per sample, with the GRPO sample std (Bessel); 1 where the group's std is 0.

    Multiplying a sample's advantages by it is GRPO's per-prompt scaling (https://arxiv.org/abs/2402.03300): a
    positive weight per prompt that re-weights prompts (biased, as GRPO's std division is), never flips a sign. A
    constant group keeps weight 1 (its LOO/RLOO advantages are exactly 0; TRePO's continuation credit, where there is
    any, keeps its own scale rather than being blown up by 1 / eps).
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    groups = _grouped(rewards, group_size, min_size=2)
    std = groups.std(dim=1, keepdim=True)
    scale = torch.where(std > 0, 1.0 / (std + eps), torch.ones_like(std))
    return scale.expand_as(groups).reshape(-1)


def continuation_advantages(scores: Tensor, sample_index: Tensor, anchor_column: Tensor,
                            final_rewards: Tensor, width: int) -> Tensor:
    """(C,) A_c = RM(c) - mean of c's siblings at its anchor: the other continuations of the same prefix W_{0,s} and
    the response W itself (its suffix is one more sample of the prefix's continuation, s being a stopping time).

    A_c = RM(c) - (S_nj - RM(c) + RM(W_n)) / K_nj, with S_nj the sum and K_nj the count of the continuations of cell
    (n, j). The baseline is independent of c given the prefix, so E[A_c ∇log π(c | W_{0,s})] = ∇_θ U(W_{0,s}) (the
    gradient of the prefix's value through the continuation's tokens; TreeRL-style training on the tree's leaves).
    ``scores`` (C,), ``sample_index`` (C,), ``anchor_column`` (C,), ``final_rewards`` (N,) = RM(W), ``width`` = M+2.
    """
    if not (scores.shape == sample_index.shape == anchor_column.shape) or scores.dim() != 1:
        raise ValueError(f"scores {tuple(scores.shape)}, sample_index {tuple(sample_index.shape)} and anchor_column "
                         f"{tuple(anchor_column.shape)} must all have shape (C,)")
    cell = sample_index.long() * width + anchor_column.long()
    size = final_rewards.shape[0] * width
    sums = torch.zeros(size, dtype=scores.dtype, device=scores.device).index_add_(0, cell, scores)
    counts = torch.zeros_like(sums).index_add_(0, cell, torch.ones_like(scores))
    baseline = (sums[cell] - scores + final_rewards.to(scores.dtype)[sample_index.long()]) / counts[cell]
    return scores - baseline
