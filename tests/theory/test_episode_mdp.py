"""The toy MDP with an environment: exact multi-turn gradients, and TRePO with turn anchors is unbiased."""
from __future__ import annotations

import pytest
import torch

from lightning_trepo.theory import estimators as est
from lightning_trepo.theory.mdp import ExactSolution, make_toy_episode_mdp, solve


@pytest.fixture(scope="module")
def exact() -> ExactSolution:
    return solve(make_toy_episode_mdp(vocab_size=2, max_len=5, seed=0, call_token=0))


def test_environment_tokens_follow_model_calls_and_have_zero_score(exact):
    env = exact.env_mask
    assert env is not None and env.any()
    assert abs(float(exact.prob.sum()) - 1.0) < 1e-13  # π_θ · p_env is a distribution over episodes
    for w, e, n in zip(exact.tokens.tolist(), env.tolist(), exact.lengths.tolist(), strict=True):
        for t in range(n):  # env token <=> the token before is a MODEL call token (0); never EOS (2)
            assert e[t] == (t > 0 and not e[t - 1] and w[t - 1] == 0)
            assert not (e[t] and w[t] == 2)
    assert torch.all(exact.scores[env] == 0)  # p_env does not depend on θ
    assert exact.scores[~env & exact.mask.bool()].abs().sum(-1).gt(0).all()


def test_gradient_matches_finite_differences(exact):
    # ∇J by autograd equals a central finite difference of J = Σ_W π_θ(W)·p_env(W)·RM(W) in one coordinate
    mdp = make_toy_episode_mdp(vocab_size=2, max_len=5, seed=0, call_token=0)
    h, i = 1e-6, 3
    plus, minus = mdp.logits.clone(), mdp.logits.clone()
    plus.view(-1)[i] += h
    minus.view(-1)[i] -= h
    from dataclasses import replace
    fd = (solve(replace(mdp, logits=plus)).objective - solve(replace(mdp, logits=minus)).objective) / (2 * h)
    assert abs(float(fd - exact.grad[i])) < 1e-8


@pytest.mark.parametrize("num_anchors", [1, 2])
@pytest.mark.parametrize("continuations", [None, 2])
def test_trepo_turn_anchors_are_unbiased(exact, num_anchors, continuations):
    m = est.moments(exact, est.turn_anchors(exact, num_anchors, continuations))
    assert torch.allclose(m.mean, exact.grad, rtol=0, atol=1e-12)
    reinforce = est.moments(exact, est.reinforce(exact))
    assert torch.allclose(reinforce.mean, exact.grad, rtol=0, atol=1e-12)
    if continuations is None:  # exact U at the turn starts: Theorem 2 per segment, less variance than REINFORCE
        assert m.variance < reinforce.variance


def test_an_anchor_from_the_final_length_is_still_biased(exact):
    # T // 2 looks at the future: the environment does not change that
    bias = est.moments(exact, est.final_length_anchor(exact)).mean - exact.grad
    assert bias.abs().max() > 1e-3


def test_turn_anchors_need_an_environment():
    from lightning_trepo.theory.mdp import make_toy_mdp
    with pytest.raises(ValueError, match="episode MDP"):
        est.turn_anchors(solve(make_toy_mdp()), 1)


def test_the_last_turn_start_is_not_a_stopping_time(exact):
    # anchoring at the LAST turn start needs to know no further call comes: biased (measured max |bias| 1.9e-2 on
    # this MDP), while the FIRST turn starts above are exact to 1e-12
    from lightning_trepo.algorithms.advantages import segment_advantages
    from lightning_trepo.algorithms.anchors import turn_boundaries

    model = exact.mask * (~exact.env_mask).double()
    ends = torch.where(turn_boundaries(model, exact.mask), torch.arange(1, exact.mask.shape[1] + 1), 0).amax(1)
    last = torch.where(ends > 0, ends, exact.lengths)
    pos = torch.stack([torch.zeros_like(last), last, exact.lengths], 1)
    adv = segment_advantages(exact.prefix_values.gather(1, pos), pos, exact.mask)
    bias = est.moments(exact, est._singles(exact, adv)).mean - exact.grad
    assert bias.abs().max() > 1e-3
