"""TRePO's estimator family on the tiny model: the gate, per-sample anchors, truncated scores, trained continuations
(tree rows) and the advantage scales (docs/estimators.md, "TRePO's estimator family")."""
from __future__ import annotations

import pytest
import torch

from lightning_trepo.algorithms.advantages import (
    continuation_advantages,
    group_std_scale,
    leave_one_out_mean,
    segment_advantages,
    siblings_mixed,
)
from lightning_trepo.algorithms.losses import aggregate
from lightning_trepo.errors import ConfigError
from lightning_trepo.rollout.plan import ContinuationPlan
from tests.modules.test_trepo import batch, make


def capture_continuations(monkeypatch) -> list:
    """Record every Continuations object TRePO samples (through the rollout path's Collector)."""
    import lightning_trepo.rollout.collect as collect

    seen, real = [], collect.sample_continuations

    def recording(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(collect, "sample_continuations", recording)
    return seen


def continuation_scores(module, rollout, cont) -> torch.Tensor:
    """The scores the rollout path's Collector gives ``cont`` (one reward call, the module's ``truncated_reward``)."""
    request = ContinuationPlan(num_continuations=module.num_continuations, num_anchors=module.num_anchors,
                               truncated_reward=module.truncated_reward)
    return module.collector().score_continuations(request, rollout, cont)


def test_gate_gives_rloo_where_the_siblings_agree_and_continuations_elsewhere(monkeypatch):
    # first_char_odd is 0/1: groups of G = 4 mix. A response whose 3 siblings agree gets no continuation: its anchors
    # collapse to T and every token carries RM(W) - LOO mean (exactly RLOO); continuations are sampled only from
    # responses whose siblings are mixed.
    torch.manual_seed(4)
    seen = capture_continuations(monkeypatch)
    module = make(num_anchors=2, num_continuations=2, gate="mixed", reward="tests.modules.rewards.first_char_odd")
    rollout, _ = module.make_rollout(batch(module))
    r, mask = rollout.rewards, rollout.completion_mask
    gate = siblings_mixed(r, 4)
    assert gate.any() and (~gate).any(), "the seed should give both kinds of rows"
    loo = leave_one_out_mean(r, 4)
    for n in (~gate).nonzero().flatten().tolist():
        assert (rollout.anchor_positions[n, 1:] == rollout.lengths[n]).all()
        torch.testing.assert_close(rollout.advantages[n], (r[n] - loo[n]) * mask[n].float())
    assert set(seen[0].sample_index.tolist()) <= set(gate.nonzero().flatten().tolist())


def test_unsolved_gate_samples_in_failed_groups_and_gives_rloo_where_every_sibling_solved(monkeypatch):
    # answer_is_even is constant per prompt: groups are all solved (1) or all failed (0). gate=unsolved (threshold
    # rollout.val_success_threshold = 1): continuations exactly from the responses of failed groups, where RLOO's
    # advantage is 0 and TRePO's anchors give the head +U(s) - 0 and the tail 0 - U(s); solved groups are RLOO's 0.
    torch.manual_seed(5)
    seen = capture_continuations(monkeypatch)
    module = make(num_anchors=1, num_continuations=2, gate="unsolved", reward="tests.modules.rewards.answer_is_even")
    rollout, metrics = module.make_rollout(batch(module))
    r = rollout.rewards
    failed = r < 1
    assert failed.any() and (~failed).any(), "the seed should give both kinds of groups"
    assert set(seen[0].sample_index.tolist()) == set(failed.nonzero().flatten().tolist())
    assert float(metrics["trepo/continuation_tokens"]) > 0
    assert (rollout.advantages[~failed] == 0).all()
    for n in (~failed).nonzero().flatten().tolist():
        assert (rollout.anchor_positions[n, 1:] == rollout.lengths[n]).all()


def test_gate_truncated_reward_reaches_the_collectors_gate():
    # the key travels in the plan the collector reads (its effect on the gate: tests/rollout/test_collect.py)
    plan = make(num_anchors=1, gate="mixed", gate_truncated_reward=0.0).rollout_plan().continuations
    assert plan is not None and plan.gate_mixed and plan.gate_truncated_reward == 0.0
    assert make(num_anchors=1, gate="mixed").rollout_plan().continuations.gate_truncated_reward is None


def test_constant_rewards_close_every_gate_and_sample_nothing():
    torch.manual_seed(5)
    module = make(num_anchors=2, num_continuations=2, gate="mixed", reward="tests.modules.rewards.answer_is_even")
    rollout, metrics = module.make_rollout(batch(module))  # every reward of a prompt is the same
    assert float(metrics["trepo/continuation_tokens"]) == 0.0
    assert (rollout.advantages == 0).all()


def test_a_step_without_continuations_trains_with_continuation_rows_and_a_behaviour_pass():
    # every gate closed and two epochs (so a behaviour log-prob pass): there are no continuation rows to add, and the
    # step goes on (it used to fail on the behaviour pass over an empty set of rows)
    from lightning_trepo import UpdateConfig

    torch.manual_seed(5)
    module = make(num_anchors=2, num_continuations=2, gate="mixed", reward="tests.modules.rewards.answer_is_even",
                  train_continuations=True, update=UpdateConfig(epochs=2))
    rollout, metrics = module.make_rollout(batch(module))
    assert float(metrics["trepo/tree_rows"]) == 0.0 and rollout.num_samples == 8 and rollout.tree is None
    assert rollout.old_logprobs is not None and torch.isfinite(module.compute_loss(rollout).loss)


def test_truncated_reward_replaces_the_score_of_truncated_responses_and_continuations(monkeypatch):
    # max_new_tokens 3 truncates most responses; truncated_reward -1 must replace RM(W) = Û(T) for them, and the
    # score of every truncated continuation
    torch.manual_seed(6)
    seen = capture_continuations(monkeypatch)
    module = make(num_anchors=1, num_continuations=2, max_new_tokens=3, truncated_reward=-1.0)
    rollout, _ = module.make_rollout(batch(module))
    assert rollout.truncated.any()
    tree_scores = module.score_samples(rollout.to_samples()).rewards.to(rollout.rewards)
    expected = torch.where(rollout.truncated, torch.full_like(tree_scores, -1.0), tree_scores)
    torch.testing.assert_close(rollout.anchor_values[:, -1], expected)
    cont = seen[0]
    scores = continuation_scores(module, rollout, cont)
    assert cont.truncated.any()
    assert (scores[cont.truncated] == -1.0).all() and (scores[~cont.truncated] != -1.0).all()


def test_trained_continuations_are_rows_of_exactly_the_sampled_tokens(monkeypatch):
    # each tree row: prompt = response's prompt + prefix W_{0,s}; completion = the continuation's own generated tokens;
    # advantage = w (RM(c) - mean of its siblings at the anchor) on every one of them. The tokens trained on are the
    # tokens the engine counted.
    torch.manual_seed(7)
    seen = capture_continuations(monkeypatch)
    module = make(num_anchors=2, num_continuations=2, train_continuations=True, continuation_weight=0.5)
    rollout, metrics = module.make_rollout(batch(module))
    cont, n = seen[0], 8
    c = cont.sample_index.numel()
    assert c > 0 and rollout.num_samples == n + c and float(metrics["trepo/tree_rows"]) == c
    tree = rollout.select(torch.arange(n, n + c))
    assert int(tree.completion_mask.sum()) == cont.generated_tokens == float(metrics["trepo/continuation_tokens"])
    originals = rollout.select(torch.arange(n))
    scores = continuation_scores(module, originals, cont)
    width = module.num_anchors + 2
    adv = 0.5 * continuation_advantages(scores, cont.sample_index, cont.anchor_column, originals.rewards, width)
    for i in range(c):
        row = int(cont.sample_index[i])
        full = cont.completion_ids[i][cont.completion_mask[i].bool()]
        s = full.numel() - int(cont.generated_lengths[i])
        prompt = originals.prompt_ids[row][originals.prompt_mask[row].bool()]
        assert torch.equal(tree.prompt_ids[i][tree.prompt_mask[i].bool()], torch.cat([prompt, full[:s]]))
        assert torch.equal(tree.completion_ids[i][tree.completion_mask[i].bool()], full[s:])
        torch.testing.assert_close(tree.advantages[i], adv[i] * tree.completion_mask[i].float())
    # the merged rollout trains: the loss on all rows back-propagates into the policy
    out = module.compute_loss(rollout)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.policy.parameters())


def test_per_sample_anchors_are_drawn_for_every_response(monkeypatch):
    import lightning_trepo.modules.trepo as trepo

    drawn, real = [], trepo.fixed_anchor_offsets

    def recording(*args, **kwargs):
        drawn.append(real(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(trepo, "fixed_anchor_offsets", recording)
    torch.manual_seed(8)
    module = make(num_anchors=2, num_continuations=1, max_new_tokens=6, anchor_sampling="sample")
    rollout, _ = module.make_rollout(batch(module))
    per_sample = drawn[-1]
    assert per_sample.shape == (8, 2) and len({tuple(r) for r in per_sample.tolist()}) > 1
    assert ((per_sample >= 1) & (per_sample <= 5)).all() and (per_sample[:, 1] > per_sample[:, 0]).all()
    expected = torch.minimum(per_sample, rollout.lengths[:, None])
    assert torch.equal(rollout.anchor_positions[:, 1:-1], expected)


def test_group_scale_multiplies_each_response_by_its_groups_inverse_std():
    torch.manual_seed(9)
    module = make(num_anchors=1, num_continuations=2, advantage_scale="group")
    rollout, _ = module.make_rollout(batch(module))
    plain = segment_advantages(rollout.anchor_values, rollout.anchor_positions, rollout.completion_mask)
    torch.testing.assert_close(rollout.advantages, plain * group_std_scale(rollout.rewards, 4)[:, None])


def test_whiten_gives_zero_mean_unit_std_over_trained_tokens():
    torch.manual_seed(10)
    module = make(num_anchors=1, num_continuations=2, advantage_scale="whiten", train_continuations=True)
    rollout, _ = module.make_rollout(batch(module))
    mask = rollout.completion_mask.bool()
    values = rollout.advantages[mask]
    assert abs(float(values.mean())) < 1e-5 and abs(float(values.std()) - 1.0) < 1e-3
    assert (rollout.advantages[~mask] == 0).all()


def test_continuation_norm_responses_adds_the_tree_rows_to_the_responses_mean():
    # token_mean: pooled divides Σ A·logπ over responses AND tree rows by all their tokens; responses keeps the
    # responses' own token count as the denominator, so every advantage is pooled's x (all tokens / response tokens)
    rollouts = {}
    for norm in ("pooled", "responses"):
        torch.manual_seed(11)
        module = make(num_anchors=1, num_continuations=2, train_continuations=True, continuation_norm=norm)
        rollouts[norm], _ = module.make_rollout(batch(module))
    pooled, responses = rollouts["pooled"], rollouts["responses"]
    assert torch.equal(pooled.completion_ids, responses.completion_ids) and pooled.num_samples > 8
    all_tokens, response_tokens = float(pooled.completion_mask.sum()), float(pooled.completion_mask[:8].sum())
    torch.testing.assert_close(responses.advantages, pooled.advantages * (all_tokens / response_tokens))
    # so the loss is the responses' own token_mean (as without any tree rows) plus the tree rows' sum over the
    # responses' token count
    logp = torch.randn(pooled.completion_mask.shape)
    mask = pooled.completion_mask
    terms = -(pooled.advantages * logp * mask)
    total = aggregate(-(responses.advantages * logp * mask), mask)
    torch.testing.assert_close(total, aggregate(terms[:8], mask[:8]) + terms[8:].sum() / response_tokens)


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"continuation_norm": "sum"}, "continuation_norm"),
    ({"gate": "mixed", "group_size": 2}, "rollout.group_size"),
    ({"gate": "unsolved", "group_size": 1}, "rollout.group_size"),
    ({"continuation_weight": 0.0}, "continuation_weight"),
    ({"gate": "sometimes"}, "gate"),
    ({"advantage_scale": "batch"}, "advantage_scale"),
    ({"gate_truncated_reward": 0.0}, "gate_truncated_reward"),
])
def test_bad_estimator_settings_name_their_key(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make(**kwargs)
