"""Advantage estimators: hand-derived values, group properties, padding invariance, errors."""
from __future__ import annotations

import math

import pytest
import torch

from lightning_trepo.algorithms.advantages import (
    gae,
    grpo_advantages,
    informative_groups,
    leave_one_out_mean,
    reinforce_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    remax_advantages,
    rloo_advantages,
    segment_advantages,
    token_level_rewards,
)

F64 = torch.float64


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-12) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=tol)


# ---------------------------------------------------------------- REINFORCE / RLOO


def test_reinforce_is_the_reward_and_a_copy() -> None:
    r = t(1.0, -2.0, 0.5)
    a = reinforce_advantages(r)
    assert torch.equal(a, r)
    a[0] = 99.0
    assert r[0] == 1.0


def test_rloo_hand_values() -> None:
    # group [1, 2, 4]: 1-(2+4)/2 = -2, 2-(1+4)/2 = -0.5, 4-(1+2)/2 = 2.5
    # group [0, 0, 3]: 0-(0+3)/2 = -1.5 (twice), 3-(0+0)/2 = 3
    close(rloo_advantages(t(1, 2, 4, 0, 0, 3), 3), t(-2, -0.5, 2.5, -1.5, -1.5, 3))


def test_rloo_equals_scaled_centred_rewards_and_loo_mean() -> None:
    r = torch.randn(12, dtype=F64, generator=torch.Generator().manual_seed(0))
    g = r.view(3, 4)
    expected = (4 / 3) * (g - g.mean(1, keepdim=True))  # r_i - (S - r_i)/(G-1) = G/(G-1) (r_i - mean)
    close(rloo_advantages(r, 4), expected.reshape(-1))
    close(leave_one_out_mean(r, 4), ((g.sum(1, keepdim=True) - g) / 3).reshape(-1))


@pytest.mark.parametrize(
    "fn",
    [
        rloo_advantages,
        lambda r, g: grpo_advantages(r, g),
        lambda r, g: grpo_advantages(r, g, "batch"),
        lambda r, g: grpo_advantages(r, g, "none"),
    ],
)
def test_constant_group_gives_exact_zeros(fn) -> None:
    # 0.1 * 3 / 3 != 0.1 in floating point: a naive mean would leak ~1e-17 advantages
    r = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.7, 0.7, 1e8 + 1, 1e8 + 1, 1e8 + 1, 1.0, 2.0, 4.0], dtype=F64)
    a = fn(r, 3)
    assert torch.equal(a[:9], torch.zeros(9, dtype=F64))
    assert (a[9:] != 0).all()
    r32 = torch.full((4,), 0.3, dtype=torch.float32)
    assert torch.equal(fn(r32, 2), torch.zeros(4))


@pytest.mark.parametrize(
    "fn", [rloo_advantages, lambda r, g: grpo_advantages(r, g), lambda r, g: grpo_advantages(r, g, "none")]
)
def test_shift_invariance_within_each_group(fn) -> None:
    gen = torch.Generator().manual_seed(1)
    r = torch.randn(12, dtype=F64, generator=gen)
    shifts = torch.tensor([3.0, -7.5, 100.0], dtype=F64).repeat_interleave(4)
    close(fn(r + shifts, 4), fn(r, 4), tol=1e-10)


def test_grpo_batch_scale_is_invariant_to_a_global_shift() -> None:
    r = torch.randn(8, dtype=F64, generator=torch.Generator().manual_seed(2))
    close(grpo_advantages(r + 42.0, 4, "batch"), grpo_advantages(r, 4, "batch"), tol=1e-10)


@pytest.mark.parametrize("scale", ["group", "batch"])
def test_grpo_scale_invariance(scale: str) -> None:
    r = torch.randn(9, dtype=F64, generator=torch.Generator().manual_seed(3))
    close(grpo_advantages(7.0 * r, 3, scale, eps=0.0), grpo_advantages(r, 3, scale, eps=0.0))


def test_grpo_hand_values_use_sample_std() -> None:
    # [1, 3]: mean 2, deviations ∓1, SAMPLE std sqrt((1+1)/(2-1)) = √2 -> ∓1/√2 (population std would give ∓1)
    s = 1 / math.sqrt(2)
    close(grpo_advantages(t(1, 3), 2, eps=0.0), t(-s, s))
    # [1, 2, 4]: mean 7/3, deviations -4/3, -1/3, 5/3, sample var (16+1+25)/9/2 = 7/3
    sd = math.sqrt(7 / 3)
    close(grpo_advantages(t(1, 2, 4), 3, eps=0.0), t(-4 / 3 / sd, -1 / 3 / sd, 5 / 3 / sd))
    # eps enters as std + eps
    close(grpo_advantages(t(1, 3), 2, eps=0.5), t(-1 / (math.sqrt(2) + 0.5), 1 / (math.sqrt(2) + 0.5)))


def test_grpo_batch_and_none_hand_values() -> None:
    # batch [1, 3, 5, 5]: mean 3.5, squared deviations 6.25 + 0.25 + 2.25 + 2.25 = 11, sample var 11/3
    sd = math.sqrt(11 / 3)
    close(grpo_advantages(t(1, 3, 5, 5), 2, "batch", eps=0.0), t(-1 / sd, 1 / sd, 0, 0))
    close(grpo_advantages(t(1, 3, 5, 5), 2, "none"), t(-1, 1, 0, 0))
    # scale="none" is RLOO times (G-1)/G
    r = torch.randn(6, dtype=F64, generator=torch.Generator().manual_seed(4))
    close(grpo_advantages(r, 3, "none"), rloo_advantages(r, 3) * 2 / 3)


def test_group_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="not divisible by group_size=4"):
        rloo_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="group_size must be an int >= 2"):
        grpo_advantages(torch.zeros(6), 1)
    with pytest.raises(ValueError, match="valid: group, batch, none"):
        grpo_advantages(torch.zeros(6), 3, scale="std")
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        rloo_advantages(torch.zeros(2, 3), 3)
    with pytest.raises(TypeError, match="float"):
        reinforce_advantages(torch.zeros(3, dtype=torch.long))


# ---------------------------------------------------------------- ReMax


def test_remax_per_prompt_and_expanded_baselines() -> None:
    r = t(1, 2, 3, 4)
    expected = t(0.5, 1.5, -2, -1)  # prompt 0 greedy 0.5, prompt 1 greedy 5
    close(remax_advantages(r, t(0.5, 5)), expected)
    close(remax_advantages(r, t(0.5, 5), group_size=2), expected)
    close(remax_advantages(r, t(0.5, 0.5, 5, 5)), expected)
    close(remax_advantages(r, t(0.5, 0.5, 5, 5), group_size=2), expected)


def test_remax_errors() -> None:
    with pytest.raises(ValueError, match="expected N=4 or B=2"):
        remax_advantages(torch.zeros(4), torch.zeros(3), group_size=2)
    with pytest.raises(ValueError, match="B dividing N"):
        remax_advantages(torch.zeros(4), torch.zeros(3))
    with pytest.raises(ValueError, match="not divisible"):
        remax_advantages(torch.zeros(4), torch.zeros(2), group_size=3)


# ---------------------------------------------------------------- GAE


def test_gae_hand_values() -> None:
    # r = [0, 0, 1], V = [0.5, 0.25, 0.75], V after the last token = 0, γ = 1, λ = 0.5:
    # δ3 = 1 - 0.75 = 0.25                    A3 = 0.25
    # δ2 = 0 + 0.75 - 0.25 = 0.5              A2 = 0.5 + 0.5·0.25 = 0.625
    # δ1 = 0 + 0.25 - 0.5 = -0.25             A1 = -0.25 + 0.5·0.625 = 0.0625
    # returns = A + V = [0.5625, 0.875, 1.0]; the 4th column is padding (garbage ignored)
    rewards = torch.tensor([[0.0, 0.0, 1.0, 9.0]], dtype=F64)
    values = torch.tensor([[0.5, 0.25, 0.75, 9.0]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    close(adv, torch.tensor([[0.0625, 0.625, 0.25, 0.0]], dtype=F64))
    close(ret, torch.tensor([[0.5625, 0.875, 1.0, 0.0]], dtype=F64))


def test_gae_lambda_one_is_discounted_reward_to_go_and_lambda_zero_is_td() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0]], dtype=F64)
    values = torch.tensor([[0.5, 0.25, 0.75]], dtype=F64)
    mask = torch.ones(1, 3)
    _, ret = gae(rewards, values, mask, gamma=0.9, lam=1.0)
    close(ret, torch.tensor([[0.81, 0.9, 1.0]], dtype=F64))  # Σ_k γ^k r_{t+k}
    adv, _ = gae(rewards, values, mask, gamma=0.9, lam=0.0)
    close(adv, torch.tensor([[0.9 * 0.25 - 0.5, 0.9 * 0.75 - 0.25, 1 - 0.75]], dtype=F64))


def test_gae_padding_invariance() -> None:
    gen = torch.Generator().manual_seed(5)
    rewards, values = torch.randn(3, 5, dtype=F64, generator=gen), torch.randn(3, 5, dtype=F64, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.97, lam=0.9)
    pad = torch.full((3, 3), float("nan"), dtype=F64)
    adv2, ret2 = gae(
        torch.cat([rewards, pad], 1),
        torch.cat([values, pad], 1),
        torch.cat([mask, torch.zeros(3, 3, dtype=mask.dtype)], 1),
        0.97,
        0.9,
    )
    close(adv2[:, :5], adv)
    close(ret2[:, :5], ret)
    assert torch.equal(adv2[:, 5:], torch.zeros(3, 3, dtype=F64))
    # the second row only sees its two real tokens: A2 = r2 - V2, A1 = r1 + γV2 - V1 + γλ A2
    a2 = rewards[1, 1] - values[1, 1]
    close(adv[1, :2], torch.stack([rewards[1, 0] + 0.97 * values[1, 1] - values[1, 0] + 0.97 * 0.9 * a2, a2]))


def test_gae_errors() -> None:
    with pytest.raises(ValueError, match="values has shape"):
        gae(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="gamma and lam"):
        gae(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), gamma=1.5)


# ---------------------------------------------------------------- segment advantages (TRePO)


def test_segment_advantages_hand_values() -> None:
    # row 0: T=4, anchors 0,2,4 with Û 1.0, 1.5, 3.0 -> tokens 1,2 get 0.5, tokens 3,4 get 1.5, token 5 padding
    # row 1: T=3, the interior anchor collapsed onto T (padding anchor): tokens 1..3 get 0.9-0.2, last segment empty
    # row 2: T=2, a repeated interior anchor (empty segment) is skipped: token 1 gets 0.5, token 2 gets 0.25
    positions = torch.tensor([[0, 2, 4, 4], [0, 3, 3, 3], [0, 1, 1, 2]])
    values = torch.tensor([[1.0, 1.5, 3.0, 3.0], [0.2, 0.9, 0.9, 0.9], [0.0, 0.5, 0.5, 0.75]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    expected = torch.tensor([[0.5, 0.5, 1.5, 1.5, 0], [0.7, 0.7, 0.7, 0, 0], [0.5, 0.25, 0, 0, 0]], dtype=F64)
    close(segment_advantages(values, positions, mask), expected)


def test_segment_advantages_with_all_anchors_is_theorem2() -> None:
    # anchors 0, 1, ..., T (M = T-1): A_t = U(W_{0,t}) - U(W_{0,t-1}) for t <= T
    gen = torch.Generator().manual_seed(6)
    n, length = 4, 6
    lengths = torch.tensor([6, 1, 3, 5])
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    u = torch.randn(n, length + 1, dtype=F64, generator=gen)
    positions = torch.minimum(torch.arange(length + 1)[None], lengths[:, None])
    values = u.gather(1, positions)
    diffs = (u[:, 1:] - u[:, :-1]) * mask
    close(segment_advantages(values, positions, mask), diffs)


def test_segment_advantages_telescopes_and_is_padding_invariant() -> None:
    positions = torch.tensor([[0, 1, 3, 5], [0, 2, 2, 2]])
    values = torch.tensor([[0.3, 0.1, 0.8, 2.0], [1.0, 0.4, 0.4, 0.4]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    a = segment_advantages(values, positions, mask)
    mask2 = torch.cat([mask, torch.zeros(2, 4, dtype=mask.dtype)], 1)
    a2 = segment_advantages(values, positions, mask2)
    close(a2[:, :5], a)
    assert torch.equal(a2[:, 5:], torch.zeros(2, 4, dtype=F64))


def test_segment_advantages_errors() -> None:
    mask = torch.ones(1, 3)
    v = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="must be 0"):
        segment_advantages(v, torch.tensor([[1, 2, 3]]), mask)
    with pytest.raises(ValueError, match="non-decreasing"):
        segment_advantages(v, torch.tensor([[0, 2, 1]]), torch.ones(1, 1))
    with pytest.raises(ValueError, match="response length"):
        segment_advantages(v, torch.tensor([[0, 1, 2]]), mask)
    with pytest.raises(ValueError, match="differ"):
        segment_advantages(torch.zeros(1, 2), torch.tensor([[0, 1, 3]]), mask)
    with pytest.raises(TypeError, match="integer"):
        segment_advantages(v, torch.tensor([[0.0, 1.0, 3.0]]), mask)


# ---------------------------------------------------------------- token-level rewards


def test_token_level_rewards_put_rm_on_the_last_token_and_kl_everywhere() -> None:
    # row 0: T=2 -> [-0.5·0.1, 1 - 0.5·0.2, 0]; row 1: T=1 -> [2 - 0.5·0.3, 0, 0]; padded kl ignored
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    kl = torch.tensor([[0.1, 0.2, 9.0], [0.3, 9.0, 9.0]], dtype=F64)
    out = token_level_rewards(t(1, 2), mask, kl, kl_coef=0.5)
    close(out, torch.tensor([[-0.05, 0.9, 0.0], [1.85, 0.0, 0.0]], dtype=F64))
    close(token_level_rewards(t(1, 2), mask), torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]], dtype=F64))


def test_informative_groups_drops_exactly_the_all_equal_groups() -> None:
    # groups of 3: [1, 1, 1] all equal -> dropped; [0, 1, 0] kept; [0.1+0.2, 0.3, 0.3] differ by one ulp -> kept
    # (its GRPO advantages are nonzero too, so the filter and the advantage agree exactly)
    rewards = t(1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.1 + 0.2, 0.3, 0.3)
    keep = informative_groups(rewards, 3)
    assert keep.tolist() == [False, True, True]
    nonzero = grpo_advantages(rewards, 3, scale="none").view(3, 3).ne(0).any(1)
    assert torch.equal(keep, nonzero)
    assert informative_groups(t(1.0, 1.0), 1).tolist() == [True, True]  # a group of one is always kept (verl)
    with pytest.raises(ValueError, match="not divisible by group_size"):
        informative_groups(t(1.0, 2.0, 3.0), 2)


def test_reinforce_pp_hand_values() -> None:
    # γ = 1, no KL: every token's return is RM(W): rows [2, 2] and [0, pad]; real tokens 2, 2, 0:
    # mean 4/3, sample var ((2/3)² + (2/3)² + (4/3)²) / 2 = (24/9) / 2 = 4/3 -> A = (G - 4/3) / sqrt(4/3 + 1e-8)
    mask = torch.tensor([[1, 1], [1, 0]])
    token_rewards = token_level_rewards(t(2.0, 0.0), mask)
    sd = math.sqrt(4 / 3 + 1e-8)
    expected = torch.tensor([[(2 - 4 / 3) / sd, (2 - 4 / 3) / sd], [(0 - 4 / 3) / sd, 0.0]], dtype=F64)
    close(reinforce_pp_advantages(token_rewards, mask), expected)
    # γ = 0.5, a per-token reward [1, 1 | 4]: returns [1 + 0.5·1, 1 | 4] = [1.5, 1 | 4]; mean 6.5/3,
    # sample var ((1.5 - 6.5/3)² + (1 - 6.5/3)² + (4 - 6.5/3)²) / 2
    rw = torch.tensor([[1.0, 1.0], [4.0, 9.0]], dtype=F64)
    g = [1.5, 1.0, 4.0]
    mean = sum(g) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in g) / 2 + 1e-8)
    expected = torch.tensor([[(1.5 - mean) / sd, (1.0 - mean) / sd], [(4.0 - mean) / sd, 0.0]], dtype=F64)
    close(reinforce_pp_advantages(rw, mask, gamma=0.5), expected)


def _verl_reinforce_pp(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """verl's published REINFORCE++ (core_algos.compute_reinforce_plus_plus_outcome_advantage), restated:
    a running return reset after each position by the mask, then masked whitening with the sample variance."""
    returns, running = torch.zeros_like(token_rewards), torch.zeros(token_rewards.shape[0], dtype=token_rewards.dtype)
    for step in reversed(range(token_rewards.shape[1])):
        running = token_rewards[:, step] + gamma * running
        returns[:, step] = running
        running = running * mask[:, step]
    m = mask.to(returns.dtype)
    mean = (returns * m).sum() / m.sum()
    var = (((returns - mean) ** 2) * m).sum() / m.sum() * m.sum() / (m.sum() - 1)
    return (returns - mean) * torch.rsqrt(var + 1e-8) * m


def _verl_reinforce_pp_baseline(rewards: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """verl's published REINFORCE++-baseline restated: r_i minus its group's mean, broadcast, masked whitening."""
    scores = rewards.clone()
    for start in range(0, len(rewards), group_size):
        scores[start:start + group_size] -= rewards[start:start + group_size].mean() if group_size > 1 else 0.0
    tiled = scores[:, None] * mask
    m = mask.to(tiled.dtype)
    mean = (tiled * m).sum() / m.sum()
    var = (((tiled - mean) ** 2) * m).sum() / (m.sum() - 1)
    return (tiled - mean) * torch.rsqrt(var + 1e-8) * m


def test_reinforce_pp_and_baseline_match_verls_formulas() -> None:
    gen = torch.Generator().manual_seed(9)
    mask = (torch.arange(7)[None, :] < torch.tensor([7, 3, 5, 1, 6, 2])[:, None]).long()
    token_rewards = torch.randn(6, 7, dtype=F64, generator=gen) * mask
    for gamma in (1.0, 0.9):
        close(reinforce_pp_advantages(token_rewards, mask, gamma), _verl_reinforce_pp(token_rewards, mask, gamma))
    rewards = torch.randn(6, dtype=F64, generator=gen)
    for g in (1, 2, 3):
        close(reinforce_pp_baseline_advantages(rewards, mask, g), _verl_reinforce_pp_baseline(rewards, mask, g))


def test_reinforce_pp_baseline_zero_padding_and_errors() -> None:
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    out = reinforce_pp_baseline_advantages(t(1.0, 3.0), mask, 2)
    # centred scores [-1, 1] broadcast: real tokens -1, -1, 1: mean -1/3, sample var (4/9 + 4/9 + 16/9) / 2 = 4/3
    sd = math.sqrt(4 / 3 + 1e-8)
    close(out, torch.tensor([[(-1 + 1 / 3) / sd, (-1 + 1 / 3) / sd, 0.0], [(1 + 1 / 3) / sd, 0.0, 0.0]], dtype=F64))
    with pytest.raises(ValueError, match="rewards has 3 entries"):
        reinforce_pp_baseline_advantages(t(1.0, 2.0, 3.0), mask, 1)
    with pytest.raises(ValueError, match="gamma must lie"):
        reinforce_pp_advantages(torch.zeros(2, 3, dtype=F64), mask, gamma=1.5)


def test_informative_groups_matches_verls_filter_groups() -> None:
    # verl filter_groups keeps a prompt when np.std of its group's metric is > 0 (or the group has one sample);
    # on rewards with ties (values drawn from {0, 0.5, 1}) both rules keep the same groups
    gen = torch.Generator().manual_seed(10)
    rewards = torch.randint(0, 3, (4 * 50,), generator=gen).to(F64) / 2
    verl = rewards.view(50, 4).std(dim=1, unbiased=False) > 0
    keep = informative_groups(rewards, 4)
    assert torch.equal(keep, verl) and 0 < int(keep.sum()) < 50


# ---------------------------------------------------------------- TRePO's estimator family


def test_siblings_mixed_reads_only_the_other_rewards():
    from lightning_trepo.algorithms.advantages import siblings_mixed

    # G = 4. Group [1,0,0,0]: sample 0's siblings are [0,0,0] (not mixed); 1..3 see the 1 among theirs (mixed).
    # Group [1,1,1,0]: sample 3's siblings [1,1,1] are constant; the others see [1,1,0] / [1,1,0] / [1,1,0].
    # Group [1,1,0,0]: every sample has both values among its siblings. Constant group: never.
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 0, 1, 1, 0, 0, 0.5, 0.5, 0.5, 0.5])
    assert siblings_mixed(rewards, 4).tolist() == [False, True, True, True, True, True, True, False,
                                                     True, True, True, True, False, False, False, False]


@pytest.mark.parametrize("gate", ["mixed", "unsolved"])
def test_sibling_gates_are_invariant_to_the_samples_own_reward(gate):
    # the gate of sample i never changes when only r_i changes (that is what keeps the estimator unbiased)
    from lightning_trepo.algorithms.advantages import siblings_mixed, siblings_unsolved

    def fn(r):
        return siblings_mixed(r, 3) if gate == "mixed" else siblings_unsolved(r, 3, 1.0)

    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        r = torch.randint(0, 2, (12,), generator=gen).float()
        for i in range(12):
            changed = r.clone()
            changed[i] = 1 - changed[i]
            assert fn(r)[i] == fn(changed)[i]


def test_group_std_scale_is_grpo_std_and_one_for_constant_groups():
    from lightning_trepo.algorithms.advantages import group_std_scale

    # [1,0,0,0]: mean 1/4, sample variance (9/16 + 3/16) / 3 = 1/4, std 1/2 -> scale 1 / (1/2 + eps) = 2 (eps = 0)
    # constant group: std 0 -> scale 1 (its RLOO advantages are 0 anyway)
    scale = group_std_scale(torch.tensor([1.0, 0, 0, 0, 2, 2, 2, 2]), 4, eps=0.0)
    torch.testing.assert_close(scale, torch.tensor([2.0, 2, 2, 2, 1, 1, 1, 1]))
    # equals GRPO's std division on a non-constant group: scale * (r - mean) == grpo_advantages
    r = torch.tensor([1.0, 0, 0, 1, 0, 1])
    torch.testing.assert_close(group_std_scale(r, 3) * (r - r.reshape(-1, 3).mean(1).repeat_interleave(3)),
                               grpo_advantages(r, 3))


def test_continuation_advantages_leave_one_out_among_siblings_and_the_response():
    from lightning_trepo.algorithms.advantages import continuation_advantages

    # width 3 (M = 1). Sample 0: RM(W) = 1, two continuations at column 1 scoring [1, 0]:
    #   A = 1 - (0 + 1)/2 = 0.5 and 0 - (1 + 1)/2 = -1.
    # Sample 1: RM(W) = 0, three continuations [0, 0, 1]: A = 0 - (0 + 1 + 0)/3 = -1/3 (twice), 1 - 0 = 1.
    scores = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0])
    index = torch.tensor([0, 0, 1, 1, 1])
    column = torch.tensor([1, 1, 1, 1, 1])
    adv = continuation_advantages(scores, index, column, torch.tensor([1.0, 0.0]), 3)
    torch.testing.assert_close(adv, torch.tensor([0.5, -1.0, -1 / 3, -1 / 3, 1.0]))


def test_continuation_advantages_sum_per_anchor_is_mean_minus_the_response_reward():
    # Σ_c A_c = S - (K S - S + K r) / K = S / K - r: the cell's mean continuation reward minus RM(W)
    from lightning_trepo.algorithms.advantages import continuation_advantages

    gen = torch.Generator().manual_seed(1)
    scores = torch.rand(12, generator=gen)
    index = torch.tensor([0] * 4 + [1] * 4 + [1] * 4)
    column = torch.tensor([1] * 4 + [1] * 4 + [2] * 4)
    final = torch.tensor([0.3, 0.8])
    adv = continuation_advantages(scores, index, column, final, 4)
    for cell in range(3):
        part = slice(4 * cell, 4 * cell + 4)
        torch.testing.assert_close(adv[part].sum(), scores[part].mean() - final[index[4 * cell]])


def test_siblings_unsolved_opens_where_a_sibling_failed():
    from lightning_trepo.algorithms.advantages import siblings_unsolved

    # G = 4, threshold 1. [1,0,0,0]: every sample has a failed sibling (sample 0's are all failures: the group GRPO
    # cannot learn from). [1,1,1,0]: samples 0-2 see the 0; sample 3's siblings all solved -> closed. [1,1,1,1]:
    # closed everywhere. [0.5,0.5,0.5,0.5]: all below 1 -> open everywhere.
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5])
    assert siblings_unsolved(rewards, 4, 1.0).tolist() == [True, True, True, True, True, True, True, False,
                                                           False, False, False, False, True, True, True, True]
    # threshold 0.5: the constant 0.5 group now counts as solved
    assert siblings_unsolved(rewards, 4, 0.5)[12:].tolist() == [False] * 4
