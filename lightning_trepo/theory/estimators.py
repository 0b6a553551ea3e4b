"""Gradient estimators as exact finite distributions over draws, built from the project's own functions.

A *draw* is one outcome of all the estimator's randomness: G sampled responses (a G-tuple for group
estimators), the anchor offsets drawn before generation, ...; ``Draws`` lists every outcome with its
probability, so expectations and variances are exact sums. Advantages come from
``lightning_trepo.algorithms.advantages`` / ``anchors`` and the gradient of a draw is read off the
project's ``policy_gradient_loss`` by autograd: ĝ = -∇θ loss = Σ_t c_t ∇log π(w_t | W_{0,t-1}).

Monte Carlo continuations (TRePO's Û(s) = mean of K continuation rewards) are not enumerated but
handled exactly: given the draw, Û(s) = U(s) + ε_s with independent zero-mean ε_s of variance
Var(RM | W_{0,s}) / K, and ĝ is linear in Û, so E[ĝ] is unchanged and the variance gains
Σ_s Var(ε_s)·‖∂ĝ/∂Û(s)‖² (``Draws.noise``). https://arxiv.org/abs/2506.02553
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_trepo.algorithms.advantages import (
    gae,
    group_std_scale,
    informative_groups,
    leave_one_out_mean,
    reinforce_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    remax_advantages,
    segment_advantages,
    siblings_mixed,
    siblings_unsolved,
    token_level_rewards,
)
from lightning_trepo.algorithms.anchors import (
    anchor_positions_from_offsets,
    boundary_anchor_positions,
    build_anchor_values,
    turn_anchor_positions,
)
from lightning_trepo.algorithms.losses import policy_gradient_loss
from lightning_trepo.theory.mdp import DTYPE, ExactSolution

PER_SEQUENCE = ("seq_mean_token_sum", "seq_mean_token_mean", "seq_mean_token_sum_norm")


@dataclass(frozen=True)
class Draws:
    """An estimator as a distribution over R draws of G responses each."""

    prob: Tensor  # (R,) probability of each draw
    index: Tensor  # (R, G) long, the responses of the draw
    advantages: Tensor  # (R, G) response-level or (R, G, L) token-level
    aggregation: str = "seq_mean_token_sum"
    noise: tuple[tuple[Tensor, Tensor], ...] = ()  # (Var ε (R,), ∂A/∂ε (R, G, L)) per independent noise term


@dataclass(frozen=True)
class Moments:
    mean: Tensor  # (D,) E[ĝ]
    variance: float  # tr Cov(ĝ) = E‖ĝ‖² - ‖E ĝ‖²


def draw_gradients(exact: ExactSolution, index: Tensor, advantages: Tensor, aggregation: str) -> Tensor:
    """ĝ for every draw, (R, D): -∇ of the project's ``policy_gradient_loss`` over the draw's G responses."""
    if aggregation not in PER_SEQUENCE:
        raise ValueError(f"aggregation {aggregation!r} does not decompose over draws; use one of {PER_SEQUENCE}")
    r, g = index.shape
    mask = exact.mask[index].reshape(r * g, -1)
    logp = torch.zeros_like(mask, requires_grad=True)
    adv = advantages.reshape(r * g, *advantages.shape[2:])
    loss = policy_gradient_loss(logp, adv, mask, aggregation).loss
    (coef,) = torch.autograd.grad(loss, logp)
    coef = (-coef * r).reshape(r, g, -1)  # the loss averages over the R draws; undo it
    out = torch.zeros(r, exact.scores.shape[-1], dtype=DTYPE)
    for i in range(g):
        for t in range(coef.shape[-1]):
            out += coef[:, i, t, None] * exact.scores[index[:, i], t]
    return out


def moments(exact: ExactSolution, draws: Draws) -> Moments:
    """Exact E[ĝ] and tr Cov(ĝ) by summing over the draws (plus the independent MC noise terms)."""
    grads = draw_gradients(exact, draws.index, draws.advantages, draws.aggregation)
    mean = draws.prob @ grads
    second = draws.prob @ grads.pow(2).sum(-1)
    for var, direction in draws.noise:
        d = draw_gradients(exact, draws.index, direction, draws.aggregation)
        second = second + draws.prob @ (var * d.pow(2).sum(-1))
    return Moments(mean=mean, variance=float(second - mean @ mean))


# ---------------------------------------------------------------- single-response estimators


def _singles(exact: ExactSolution, advantages: Tensor, aggregation: str = "seq_mean_token_sum") -> Draws:
    index = torch.arange(exact.prob.shape[0])[:, None]
    return Draws(exact.prob, index, advantages.unsqueeze(1), aggregation)


def reinforce(exact: ExactSolution, aggregation: str = "seq_mean_token_sum") -> Draws:
    """A_t = RM(W) for every token (Theorem 1)."""
    return _singles(exact, reinforce_advantages(exact.reward), aggregation)


def discounted_reinforce(exact: ExactSolution, gamma: float) -> Draws:
    """A_t = γ^{T-t} RM(W): GAE with λ = 1, zero values and RM on the last token."""
    rewards = token_level_rewards(exact.reward, exact.mask)
    adv, _ = gae(rewards, torch.zeros_like(rewards), exact.mask, gamma=gamma, lam=1.0)
    return _singles(exact, adv)


def remax(exact: ExactSolution) -> Draws:
    """A = RM(W) - RM(greedy response)."""
    baseline = exact.greedy_reward.expand(exact.reward.shape)
    return _singles(exact, remax_advantages(exact.reward, baseline))


def _all_positions(exact: ExactSolution) -> Tensor:
    length = exact.mask.shape[1]
    return torch.minimum(torch.arange(length + 1)[None, :], exact.lengths[:, None])


def theorem2(exact: ExactSolution) -> Draws:
    """A_t = U(W_{0,t}) - U(W_{0,t-1}): ``segment_advantages`` with anchors 0, 1, ..., T (M = T-1)."""
    positions = _all_positions(exact)
    values = exact.prefix_values.gather(1, positions)
    return _singles(exact, segment_advantages(values, positions, exact.mask))


def final_length_anchor(exact: ExactSolution) -> Draws:
    """Anchor at s = T // 2, chosen from the final length: NOT a stopping time."""
    positions = torch.stack([torch.zeros_like(exact.lengths), exact.lengths // 2, exact.lengths], dim=1)
    values = exact.prefix_values.gather(1, positions)
    return _singles(exact, segment_advantages(values, positions, exact.mask))


def boundary_anchors(exact: ExactSolution, marker: int, num_anchors: int) -> Draws:
    """Anchors after the first M occurrences of the ``marker`` token (stopping times), exact U."""
    positions, _ = boundary_anchor_positions(exact.tokens == marker, exact.mask, num_anchors)
    values = exact.prefix_values.gather(1, positions)
    return _singles(exact, segment_advantages(values, positions, exact.mask))


def turn_anchors(exact: ExactSolution, num_anchors: int, continuations: int | None = None) -> Draws:
    """TRePO ``anchor_mode: turns`` on an episode MDP: anchors at the first M turn starts (right after an
    environment token), Û(0) = U(0) and Û(T) = RM(W) exact, interior Û exact or the mean of K continuations that
    continue the episode with the environment (noise Var(RM | W_{0,s}) / K). The loss mask leaves env tokens out,
    as in training (their scores are 0 anyway)."""
    if exact.env_mask is None:
        raise ValueError("turn_anchors needs an episode MDP (make_toy_episode_mdp): this one has no environment")
    model = exact.mask * (~exact.env_mask).to(DTYPE)
    positions, _ = turn_anchor_positions(model, exact.mask, num_anchors)
    values = exact.prefix_values.gather(1, positions)
    adv = segment_advantages(values, positions, exact.mask) * model
    noise = ()
    if continuations is not None:  # env-token entries of a direction meet zero scores: no need to mask them
        var = exact.prefix_vars.gather(1, positions) / continuations
        noise = tuple(_unit_direction(var, positions, exact.mask, k) for k in range(1, positions.shape[1] - 1))
    return Draws(exact.prob, torch.arange(exact.prob.shape[0])[:, None], adv.unsqueeze(1), noise=noise)


# ---------------------------------------------------------------- fixed-offset anchors (TRePO)


def offset_sets(max_len: int, num_anchors: int) -> Tensor:
    """Every outcome of ``fixed_anchor_offsets(M, max_len, "uniform")``, equally likely: (C, M)."""
    sets = list(itertools.combinations(range(1, max_len), num_anchors))
    return torch.tensor(sets, dtype=torch.long).reshape(len(sets), num_anchors)


def _response_offset_rows(exact: ExactSolution, num_anchors: int) -> tuple[Tensor, Tensor, Tensor]:
    """(prob (R,), response (R,), offsets (R, M)) over responses × equally likely offset sets."""
    sets = offset_sets(exact.mask.shape[1], num_anchors)
    w, c = exact.prob.shape[0], sets.shape[0]
    response = torch.arange(w).repeat_interleave(c)
    return exact.prob.repeat_interleave(c) / c, response, sets.repeat(w, 1)


def fixed_anchors(
    exact: ExactSolution, num_anchors: int, continuations: int | None = None, interpolate: bool = False
) -> Draws:
    """TRePO with M offsets drawn before generation; Û exact, or the mean of K continuations.

    With ``continuations=K``, Û(0) is also a K-sample mean and Û(T) = RM(W) exactly.
    ``interpolate`` spreads each segment's U difference evenly over its tokens (linear interpolation
    of U between anchors), which design.md §5 warns is biased.
    """
    prob, response, offsets = _response_offset_rows(exact, num_anchors)
    mask = exact.mask[response]
    positions, _ = anchor_positions_from_offsets(offsets, exact.lengths[response])
    u = exact.prefix_values[response].gather(1, positions)
    values = build_anchor_values(u[:, 0], u[:, 1:-1], exact.reward[response], positions)
    adv = segment_advantages(values, positions, mask)
    if interpolate:
        widths = segment_advantages(positions.to(DTYPE), positions, mask)
        adv = torch.where(mask.bool(), adv / widths.clamp(min=1), adv)
    noise = ()
    if continuations is not None:
        var = exact.prefix_vars[response].gather(1, positions) / continuations
        noise = tuple(_unit_direction(var, positions, mask, k) for k in range(positions.shape[1] - 1))
    return Draws(prob, response[:, None], adv.unsqueeze(1), noise=noise)


def _unit_direction(var: Tensor, positions: Tensor, mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(Var ε_k, ∂A/∂Û(s_k)): segment advantages of the unit anchor vector e_k (they are linear in Û)."""
    unit = torch.zeros(positions.shape, dtype=DTYPE)
    unit[:, k] = 1.0
    return var[:, k], segment_advantages(unit, positions, mask).unsqueeze(1)


# ---------------------------------------------------------------- group estimators


def group_tuples(exact: ExactSolution, group_size: int) -> tuple[Tensor, Tensor]:
    """All G-tuples of i.i.d. responses: (prob (W^G,), index (W^G, G))."""
    w = exact.prob.shape[0]
    index = torch.cartesian_prod(*[torch.arange(w)] * group_size).reshape(-1, group_size)
    return exact.prob[index].prod(dim=1), index


def group_estimator(exact: ExactSolution, group_size: int, advantage_fn: Callable[[Tensor, int], Tensor]) -> Draws:
    """G i.i.d. responses per draw, response-level advantages from ``advantage_fn(rewards, G)``."""
    prob, index = group_tuples(exact, group_size)
    adv = advantage_fn(exact.reward[index].reshape(-1), group_size).reshape(index.shape)
    return Draws(prob, index, adv)


def trepo_leave_one_out(exact: ExactSolution, group_size: int, num_anchors: int) -> Draws:
    """TRePO with Û(0) = leave-one-out mean of the group's rewards, offsets shared by the draw, exact U."""
    return trepo_group(exact, group_size, num_anchors)


def reinforce_pp(exact: ExactSolution, group_size: int, baseline: bool = False) -> Draws:
    """REINFORCE++ over a batch of G i.i.d. responses: each draw's token returns (RM on the last token, γ = 1)
    whitened over the draw's real tokens; ``baseline``: REINFORCE++-baseline with the draw as one group (its mean
    subtracted first). For one group the whitening removes that constant again, so both give the same advantages;
    they differ only across several groups, whose G^B-fold enumeration is too large for this table."""
    prob, index = group_tuples(exact, group_size)
    rows = []
    for draw in index:  # the whitening couples the G responses of a draw: one call per draw
        mask, rewards = exact.mask[draw], exact.reward[draw]
        if baseline:
            rows.append(reinforce_pp_baseline_advantages(rewards, mask, group_size))
        else:
            rows.append(reinforce_pp_advantages(token_level_rewards(rewards, mask), mask))
    return Draws(prob, index, torch.stack(rows))


def dynamic_sampling(exact: ExactSolution, draws: Draws) -> Draws:
    """DAPO dynamic sampling: the group estimator ``draws`` conditioned on the group being informative (rewards not
    all equal), i.e. the draws :func:`informative_groups` keeps, with their probabilities renormalised."""
    g = draws.index.shape[1]
    keep = informative_groups(exact.reward[draws.index].reshape(-1), g)
    prob = draws.prob[keep]
    return Draws(prob / prob.sum(), draws.index[keep], draws.advantages[keep], draws.aggregation)


# ---------------------------------------------------------------- TRePO's estimator family (gate, tree, scale)


def gated_trepo(exact: ExactSolution, group_size: int, num_anchors: int, scale: bool = False) -> Draws:
    """TRePO with Û(0) = LOO and the ``gate=mixed`` switch: response i gets its anchors (exact U) only when its G-1
    siblings' rewards are not all equal (:func:`siblings_mixed`), else the RLOO advantage; ``scale`` also multiplies
    by the group's 1/std (:func:`group_std_scale`, ``advantage_scale=group``). Offsets shared by the draw."""
    return trepo_group(exact, group_size, num_anchors, gate=True, scale=scale)


def unsolved_trepo(exact: ExactSolution, group_size: int, num_anchors: int) -> Draws:
    """TRePO with Û(0) = LOO and ``gate=unsolved``: response i gets its anchors only when one of its G-1 siblings is
    rewarded below the median response reward (:func:`siblings_unsolved`; the toy's rewards are continuous, the
    median stands in for ``rollout.val_success_threshold``), else the RLOO advantage."""
    return trepo_group(exact, group_size, num_anchors, gate_below=float(exact.reward.median()))


def trepo_group(exact: ExactSolution, group_size: int, num_anchors: int, gate: bool = False,
                scale: bool = False, gate_below: float | None = None) -> Draws:
    """G i.i.d. responses × every equally likely offset set shared by the draw; Û(0) = LOO, exact U at the anchors,
    optionally a sibling gate (mixed, or ``gate_below``: unsolved) and GRPO's 1/std (:func:`trepo_leave_one_out`,
    :func:`gated_trepo`, :func:`unsolved_trepo`)."""
    prob, index = group_tuples(exact, group_size)
    sets = offset_sets(exact.mask.shape[1], num_anchors)
    c, r = sets.shape[0], prob.shape[0]
    prob, index = prob.repeat_interleave(c) / c, index.repeat_interleave(c, dim=0)
    flat = index.reshape(-1)
    offsets = sets.repeat(r, 1).repeat_interleave(group_size, dim=0)
    positions, _ = anchor_positions_from_offsets(offsets, exact.lengths[flat])
    rewards = exact.reward[flat]
    if gate or gate_below is not None:
        keep = siblings_mixed(rewards, group_size) if gate else siblings_unsolved(rewards, group_size, gate_below)
        positions[:, 1:-1] = torch.where(keep[:, None], positions[:, 1:-1], positions[:, -1:])
    u = exact.prefix_values[flat].gather(1, positions)
    values = build_anchor_values(leave_one_out_mean(rewards, group_size), u[:, 1:-1], rewards, positions)
    adv = segment_advantages(values, positions, exact.mask[flat])
    if scale:
        adv = adv * group_std_scale(rewards, group_size)[:, None]
    return Draws(prob, index, adv.reshape(*index.shape, -1))


def tree_trepo(exact: ExactSolution, weight: float) -> Draws:
    """TRePO M = 1 uniform offset, K = 1 continuation W' of W_{0,s} (enumerated exactly with π(W' | W_{0,s})), Û(0)
    exact, trained on W (segment advantages) AND on W' (``train_continuations``): W' tokens after s get
    w (RM(W') - RM(W)), its one sibling at the anchor being W. A draw is (W, offset, W'); an offset at or past T has
    no continuation (W' = W with advantage 0)."""
    n, length = exact.mask.shape
    sets = offset_sets(length, 1)
    rows: list[tuple[float, int, int, Tensor, Tensor]] = []
    t = torch.arange(1, length + 1)
    for w in range(n):
        for o in sets[:, 0].tolist():
            p = float(exact.prob[w]) / sets.shape[0]
            positions, _ = anchor_positions_from_offsets(torch.tensor([[o]]), exact.lengths[w:w + 1])
            s = int(positions[0, 1])
            if s >= int(exact.lengths[w]):  # padding anchor: no continuation
                values = exact.prefix_values[w:w + 1].gather(1, positions)
                adv = segment_advantages(values, positions, exact.mask[w:w + 1])[0]
                rows.append((p, w, w, adv, torch.zeros(length, dtype=DTYPE)))
                continue
            same = (exact.tokens[:, :s] == exact.tokens[w, :s]).all(1) & (exact.lengths > s)
            total = float(exact.prob[same].sum())
            for v in same.nonzero().flatten().tolist():
                q = float(exact.prob[v]) / total
                values = torch.tensor([[float(exact.prefix_values[w, 0]), float(exact.reward[v]),
                                        float(exact.reward[w])]], dtype=DTYPE)
                adv = segment_advantages(values, positions, exact.mask[w:w + 1])[0]
                tree = weight * (exact.reward[v] - exact.reward[w]) * ((t > s) & exact.mask[v].bool()).to(DTYPE)
                rows.append((p * q, w, v, adv, tree))
    prob = torch.tensor([r[0] for r in rows], dtype=DTYPE)
    index = torch.tensor([[r[1], r[2]] for r in rows], dtype=torch.long)
    adv = torch.stack([torch.stack([r[3], r[4]]) for r in rows])
    return Draws(prob, index, 2 * adv)  # seq_mean over the draw's 2 rows: x2 makes the estimate their sum


def tree_target(exact: ExactSolution, weight: float) -> Tensor:
    """What :func:`tree_trepo` estimates: Σ_t (1 + w P(s < t)) g_t, g_t = E[RM(W) ∇log π(w_t | W_{0,t-1})] the t-th
    token's term of ∇J and P(s < t) = (t-1)/(L-1) for one offset uniform on {1..L-1}: every position's term keeps its
    sign, later ones weigh more (a continuation re-trains the tokens after its anchor)."""
    length = exact.mask.shape[1]
    per_position = torch.einsum("w,w,wtd->td", exact.prob, exact.reward, exact.scores)  # (L, D) g_t
    weights = 1.0 + weight * torch.arange(length, dtype=DTYPE) / (length - 1)
    return weights @ per_position
