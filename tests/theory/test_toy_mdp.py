"""The toy MDP's exact quantities are right: probabilities, U(prefix), its variance, ∇J and scores."""
from __future__ import annotations

import pytest
import torch

from lightning_trepo.theory.mdp import ExactSolution, make_toy_mdp, solve, token_logprob_table


@pytest.fixture(scope="module")
def exact() -> ExactSolution:
    return solve(make_toy_mdp(vocab_size=2, max_len=4, seed=0))


def test_enumeration_is_complete(exact: ExactSolution) -> None:
    # EOS at T = 1..4 after 2^(T-1) prefixes (15) + 2^4 truncated responses = 31
    assert exact.prob.shape == (31,)
    assert abs(float(exact.prob.sum()) - 1.0) < 1e-14
    assert exact.scores.shape == (31, 4, 15 * 3)
    assert torch.equal(exact.mask.sum(-1).long(), exact.lengths)


def test_prefix_values_are_a_martingale(exact: ExactSolution) -> None:
    # U(empty) = J; the tower property E[U(W_{0,t})] = J for every t; U(W_{0,T}) = RM(W)
    assert torch.allclose(exact.prefix_values[:, 0], exact.objective.expand(31), rtol=0, atol=1e-14)
    for t in range(5):
        assert abs(float(exact.prob @ exact.prefix_values[:, t] - exact.objective)) < 1e-14
    ends = exact.prefix_values.gather(1, exact.lengths[:, None]).squeeze(1)
    assert torch.equal(ends, exact.reward)
    # E[U(W_{0,t+1}) | W_{0,t}] = U(W_{0,t}): group by the length-t prefix and compare
    for t in range(4):
        alive = exact.lengths > t
        keys = [tuple(row[:t].tolist()) for row in exact.tokens[alive]]
        p, u_next, u_now = exact.prob[alive], exact.prefix_values[alive, t + 1], exact.prefix_values[alive, t]
        for key in set(keys):
            sel = torch.tensor([k == key for k in keys])
            assert abs(float((p[sel] @ u_next[sel]) / p[sel].sum() - u_now[sel][0])) < 1e-14


def test_prefix_variance_at_the_root_is_the_reward_variance(exact: ExactSolution) -> None:
    var = exact.prob @ (exact.reward - exact.objective) ** 2
    assert torch.allclose(exact.prefix_vars[:, 0], var.expand(31), rtol=0, atol=1e-14)
    assert torch.equal(exact.prefix_vars.gather(1, exact.lengths[:, None]), torch.zeros(31, 1, dtype=torch.float64))


def test_gradient_matches_finite_differences_and_scores_average_to_zero(exact: ExactSolution) -> None:
    mdp = make_toy_mdp(vocab_size=2, max_len=4, seed=0)

    def objective(theta: torch.Tensor) -> float:
        prob = token_logprob_table(theta, exact.tokens, exact.states, exact.mask).sum(-1).exp()
        return float(prob @ exact.reward)

    direction = torch.randn(mdp.logits.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    h = 1e-5
    fd = (objective(mdp.logits + h * direction) - objective(mdp.logits - h * direction)) / (2 * h)
    assert abs(fd - float(exact.grad @ direction.reshape(-1))) < 1e-9
    # E[∇log π(w_t | prefix)] = 0 for every position t
    for t in range(4):
        assert float((exact.prob @ exact.scores[:, t]).abs().max()) < 1e-15


def test_greedy_reward_is_the_reward_of_the_stepwise_argmax_response() -> None:
    # find, among the enumerated responses, the one whose every token is the argmax at its prefix
    mdp = make_toy_mdp(seed=3)
    exact = solve(mdp)
    best = mdp.logits.argmax(-1)[exact.states]  # (W, L) argmax token at each prefix
    greedy = ((best == exact.tokens) | (exact.mask == 0)).all(-1)
    assert int(greedy.sum()) == 1
    assert abs(float(exact.greedy_reward) - float(exact.reward[greedy][0])) < 1e-14
