"""TRePO: anchors, continuations, anchor values and per-token advantages, batching, memory."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from lightning_trepo import GRPO, TRePO, UpdateConfig
from lightning_trepo.rollout.continuations import BoundaryMarker
from reward_models import FunctionReward
from tests.helpers import TINY, datamodule, rollout_cfg, trainer

PROMPTS = ["12+7=", "3+45="]


def make(group_size: int = 4, max_new_tokens: int = 6, reward: str = "tests.modules.rewards.length_reward",
         **kw) -> TRePO:
    module = TRePO(reward=FunctionReward(reward), policy=TINY,
                   rollout=rollout_cfg(group_size=group_size, max_new_tokens=max_new_tokens), **kw)
    module.configure_model()
    return module


def batch(module: TRePO) -> dict:
    ids = [module.tokenizer(p, add_special_tokens=False).input_ids for p in PROMPTS]
    return {"prompts": PROMPTS, "prompt_ids": ids, "metadata": [{"answer": "19"}, {"answer": "48"}],
            "rollout_step": 0}


def test_segment_differences_telescope_to_reward_minus_start_value():
    # Every token of segment (s_{j-1}, s_j] carries the whole difference Û(s_j) − Û(s_{j-1}), so reading A
    # at the last token of each non-empty segment and summing telescopes: Û(T) − Û(0) = RM(W) − LOO mean.
    torch.manual_seed(0)
    module = make(num_anchors=3, num_continuations=2)
    rollout, _ = module.make_rollout(batch(module))
    rewards = rollout.rewards
    g = rewards.reshape(-1, 4)
    loo = ((g.sum(1, keepdim=True) - g) / 3).reshape(-1)
    adv, positions = rollout.advantages, rollout.anchor_positions
    for n in range(rollout.num_samples):
        ends = sorted(set(positions[n, 1:].tolist()))  # distinct segment ends s_j (1-based)
        total = sum(float(adv[n, s - 1]) for s in ends)
        assert abs(total - float(rewards[n] - loo[n])) < 1e-5
        for a, b in zip([0] + ends[:-1], ends, strict=True):  # constant within each segment
            assert torch.allclose(adv[n, a:b], adv[n, b - 1].expand(b - a))
    values = rollout.anchor_values
    torch.testing.assert_close(values[:, -1], rewards)  # Û(T) = RM(W) exactly
    torch.testing.assert_close(values[:, 0], loo)
    assert (positions[:, -1] == rollout.lengths).all() and (positions[:, 0] == 0).all()
    assert (adv[rollout.completion_mask == 0] == 0).all()


def test_reward_fixed_by_first_token_puts_all_credit_on_the_first_segment():
    # RM = 1 iff the completion starts with "1". Every anchor s >= 1 keeps the first token, so each of its
    # K continuations scores RM(W) exactly: Û(s_j) = RM(W) for j >= 1. Hence tokens 1..s_1 get
    # RM(W) − Û(0) and every later token gets exactly 0.
    torch.manual_seed(1)
    module = make(num_anchors=2, num_continuations=3, reward="tests.modules.rewards.starts_with_one")
    rollout, _ = module.make_rollout(batch(module))
    positions, adv, r = rollout.anchor_positions, rollout.advantages, rollout.rewards
    u0 = rollout.anchor_values[:, 0]
    for n in range(rollout.num_samples):
        s1 = int(positions[n, 1])
        torch.testing.assert_close(adv[n, :s1], (r[n] - u0[n]).expand(s1))
        assert (adv[n, s1:] == 0).all()


def test_continuations_extend_the_prefix_within_the_same_length_budget():
    torch.manual_seed(2)
    module = make(num_anchors=2, num_continuations=2, max_new_tokens=6)
    from lightning_trepo.rollout.continuations import planned_anchors, request_pairs, sample_continuations

    rollout, _ = module.make_rollout(batch(module))
    positions, valid = planned_anchors(module.rollout_plan().continuations, rollout)
    rows, cols = request_pairs(valid, fresh_start=False)
    cont = sample_continuations(module.engine, module.policy, rollout, positions, rows, cols, 2,
                                module.rollout_cfg.sampling)
    assert cont.completion_ids.shape[0] == 2 * rows.numel()
    lengths = cont.completion_mask.sum(-1)
    assert (lengths <= 6).all()  # never longer than an original response may be
    for i in range(cont.completion_ids.shape[0]):
        n, s = int(cont.sample_index[i]), int(positions[cont.sample_index[i], cont.anchor_column[i]])
        assert torch.equal(cont.completion_ids[i, :s], rollout.completion_ids[n, :s])
        assert lengths[i] > s  # at least one new token


@pytest.mark.parametrize("start_value", ["loo", "fresh"])
def test_all_continuations_of_a_step_share_one_generate_call(start_value):
    module = make(num_anchors=2, num_continuations=2, start_value=start_value)
    _, metrics = module.make_rollout(batch(module))
    # one call for the G samples of every prompt, one for all continuations (and fresh starts)
    assert float(metrics["rollout/generate_calls"]) == 2.0
    assert float(metrics["trepo/continuation_calls"]) == 1.0
    assert float(metrics["trepo/continuation_tokens"]) > 0
    assert 0.0 < float(metrics["trepo/continuation_time_frac"]) < 1.0


def test_fresh_start_value_is_the_mean_of_fresh_samples(monkeypatch):
    torch.manual_seed(3)
    module = make(num_anchors=0, num_continuations=4, start_value="fresh")
    scored, score = [], module.score_samples

    def recording(samples):
        out = score(samples)
        scored.append((samples, out.rewards.clone()))
        return out

    monkeypatch.setattr(module, "score_samples", recording)
    rollout, _ = module.make_rollout(batch(module))
    n = rollout.num_samples
    assert len(scored) == 2  # the N samples, then every fresh sample in one reward-tree call
    fresh, fresh_rewards = scored[1]
    # K = 4 fresh responses from each sample's prompt alone (an empty prefix), sample by sample
    assert len(fresh) == 4 * n and fresh.prompts == [p for p in rollout.prompts for _ in range(4)]
    # Û(0) of sample n = the mean of ITS 4 fresh rewards
    u0 = rollout.anchor_values[:, 0]
    torch.testing.assert_close(u0, fresh_rewards.reshape(n, 4).mean(1).to(u0), rtol=0, atol=1e-6)
    # with M = 0 the only segment is the whole response: A_t = RM(W) − Û(0) for every token
    adv, mask, r = rollout.advantages, rollout.completion_mask, rollout.rewards
    torch.testing.assert_close(adv, (r - u0)[:, None] * mask)


def test_memory_is_grpo_memory():
    trepo, grpo = make(), GRPO(reward=FunctionReward("tests.modules.rewards.length_reward"), policy=TINY)
    grpo.configure_model()
    assert trepo.ref_model is None
    assert sum(p.numel() for p in trepo.parameters()) == sum(p.numel() for p in grpo.parameters())


def test_boundary_anchors_follow_the_marker():
    module = make()
    marker = BoundaryMarker(module.tokenizer, r"\n")
    ids = torch.tensor([module.tokenizer("a\nbc\nd", add_special_tokens=False).input_ids])
    assert marker(ids).tolist() == [[False, True, False, False, True, False]]


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="anchor_mode"):
        make(anchor_mode="half_length")
    with pytest.raises(ValueError, match="group_size"):
        make(group_size=1)
    with pytest.raises(ValueError, match="num_anchors"):
        make(num_anchors=9, max_new_tokens=6)


def test_trains_with_ppo_epochs(tmp_path):
    pl.seed_everything(0)
    module = TRePO(reward=FunctionReward("tests.modules.rewards.length_reward"), policy=TINY,
                   rollout=rollout_cfg(group_size=2), update=UpdateConfig(epochs=2, num_minibatches=2),
                   num_anchors=1, num_continuations=1, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    t = trainer(tmp_path, max_steps=4)
    t.fit(module, datamodule=datamodule(batch_size=2))
    assert t.global_step == 4
    assert "clip_frac" in "".join(t.callback_metrics)


def test_no_valid_anchor_still_goes_through_the_engine(monkeypatch):
    # every response ends before the only anchor offset: no continuation is needed, but the engine is still
    # called (a sharded rank must keep joining collectives) and the advantages reduce to RM(W) − Û(0)
    module = make(num_anchors=1, num_continuations=2, anchor_mode="every", anchor_every=5, max_new_tokens=6)
    from lightning_trepo.rollout.continuations import planned_anchors, sample_continuations

    continue_from, requests = module.engine.continue_from, []

    def past_the_end(plan, rollout):  # the anchor at offset 5 lies at or after every response's end: it collapses to T
        positions, valid = planned_anchors(plan, rollout)
        positions[:, 1], valid[:, 1] = positions[:, -1], False
        return positions, valid

    def counting(model, prefixes, *args, **kwargs):
        requests.append(len(prefixes))
        return continue_from(model, prefixes, *args, **kwargs)

    monkeypatch.setattr("lightning_trepo.rollout.collect.planned_anchors", past_the_end)
    monkeypatch.setattr(module.engine, "continue_from", counting)
    rollout, metrics = module.make_rollout(batch(module))
    assert requests == [0] and float(metrics["trepo/continuation_tokens"]) == 0
    # Û(0) = leave-one-out mean: the mean of the other 3 rewards of the group of G = 4
    r = rollout.rewards.reshape(-1, 4)
    u0 = ((r.sum(1, keepdim=True) - r) / 3).reshape(-1)
    torch.testing.assert_close(rollout.advantages, (rollout.rewards - u0)[:, None] * rollout.completion_mask)
    positions = torch.zeros(rollout.num_samples, 3, dtype=torch.long)
    empty = torch.zeros(0, dtype=torch.long)
    calls = module.engine.generate_calls
    cont = sample_continuations(module.engine, module.policy, rollout, positions, empty, empty, 2,
                                module.rollout_cfg.sampling)
    assert cont.completion_ids.shape[0] == 0 and cont.completions == [] and cont.generated_tokens == 0
    assert module.engine.generate_calls == calls  # zero rows: no local call (the engine pads only when synced)
