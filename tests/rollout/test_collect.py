"""Collector: one reward call for samples and greedy responses, dynamic sampling's lazy refill, the extension hook,
continuation anchors (per-sample offsets, the mixed gate, turn starts) and continuation scores; with an environment,
episodes for samples, greedy baselines, validation and continuations."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lightning_trepo.policy import PolicyConfig, TinyModelConfig, load_policy
from lightning_trepo.rollout.collect import Collector, final_rewards, score_rollouts
from lightning_trepo.rollout.continuations import Continuations
from lightning_trepo.rollout.engine import RolloutEngine
from lightning_trepo.rollout.episodes import EpisodeConfig
from lightning_trepo.rollout.plan import ContinuationPlan, RolloutPlan, SamplingConfig
from lightning_trepo.types import Rollout
from reward_models import RewardOutput
from tests.envs.scripted import Scripted
from tests.helpers import tiny_rollout


class FakeEngine:
    """``rollout`` returns hand-made rollouts (G samples + B greedy rows when planned) and records the plans."""

    pad_id = 0

    def __init__(self) -> None:
        self.plans: list[RolloutPlan] = []

    def rollout(self, model, plan, prompts, prompt_ids, metadata, device):
        self.plans.append(plan)
        b, g = len(prompt_ids), plan.group_size
        out = tiny_rollout([[1, 1, 0]] * (b * g), group_size=g, seed=len(self.plans))
        out.prompts = [p for p in prompts for _ in range(g)]
        if plan.greedy_baseline:
            out.greedy = tiny_rollout([[1, 0]] * b, group_size=1, seed=100)
        return out


class CountingScore:
    """Reward = the index of the sample in its reward call (0, 1, 2, ...); records every call's size."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, samples) -> RewardOutput:
        n = len(samples)
        self.sizes.append(n)
        return RewardOutput(torch.arange(n, dtype=torch.float32), {"node/value": torch.arange(n) * 10.0,
                                                                     "node/scalar": torch.tensor(3.0)})


BATCH = {"prompts": ["a", "b"], "prompt_ids": [[5], [6]], "metadata": [{}, {}]}


def test_samples_and_greedy_responses_share_one_reward_call():
    # B = 2 prompts x G = 2 samples, then 2 greedy rows in the same call: rewards 0..3 for the samples and 4, 5 for
    # the greedy responses (their indices in the one call); the per-sample metric splits the same way
    engine, score = FakeEngine(), CountingScore()
    collected = Collector(engine, torch.nn.Identity(), score, torch.device("cpu")).collect(
        RolloutPlan(group_size=2, greedy_baseline=True), BATCH)
    assert score.sizes == [6]
    assert collected.rewards.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert collected.rollout.greedy_rewards is not None and collected.rollout.greedy_rewards.tolist() == [4.0, 5.0]
    assert collected.components["node/value"].tolist() == [0.0, 10.0, 20.0, 30.0]
    assert collected.components["node/scalar"].item() == 3.0
    assert "score" in collected.rollout.timings and collected.metrics == {}


def test_a_decoded_greedy_baseline_is_reused_not_decoded_again():
    engine, score = FakeEngine(), CountingScore()
    greedy = tiny_rollout([[1, 1]] * 2, group_size=1, seed=7)
    collected = Collector(engine, torch.nn.Identity(), score, torch.device("cpu")).collect(
        RolloutPlan(group_size=2, greedy_baseline=True), BATCH, greedy=greedy)
    assert engine.plans[0].greedy_baseline is False  # the engine decoded only the samples
    assert collected.rollout.greedy is greedy and score.sizes == [6]


def test_refill_stream_is_made_only_when_a_plan_samples_dynamically():
    made = []

    def refill():
        made.append(1)
        return iter([BATCH] * 4)

    engine, score = FakeEngine(), CountingScore()
    collector = Collector(engine, torch.nn.Identity(), score, torch.device("cpu"), refill=refill)
    collector.collect(RolloutPlan(group_size=2), BATCH)
    assert made == []
    # rewards 0..3 in one call: both groups informative ([0, 1], [2, 3]) -> no extra round, one stream made
    collected = collector.collect(RolloutPlan(group_size=2, dynamic_sampling=True, max_extra_rounds=2), BATCH)
    assert made == [1] and collected.metrics["dynamic/rounds"].item() == 0.0
    assert collected.metrics["dynamic/informative_frac"].item() == 1.0


def test_the_extension_gets_the_raw_rewards_and_adds_its_metrics():
    seen = []

    def extend(plan, rollout, rewards):
        seen.append(rewards.tolist())
        return replace(rollout, anchor_values=torch.ones(rollout.num_samples, 2)), {"ext/x": torch.tensor(1.0)}

    collected = Collector(FakeEngine(), torch.nn.Identity(), CountingScore(), torch.device("cpu"),
                          extend=extend).collect(RolloutPlan(group_size=2), BATCH)
    assert seen == [[0.0, 1.0, 2.0, 3.0]]
    assert collected.rollout.anchor_values is not None and collected.metrics == {"ext/x": torch.tensor(1.0)}


def test_score_rollouts_splits_one_call_back_per_rollout():
    score = CountingScore()
    a, b = tiny_rollout([[1, 0]] * 2, group_size=2), tiny_rollout([[1, 1, 1]], group_size=1)
    (ra, ma), (rb, mb) = score_rollouts(score, [a, b], pad_id=0, device=torch.device("cpu"))
    assert score.sizes == [3] and ra.tolist() == [0.0, 1.0] and rb.tolist() == [2.0]
    assert mb["node/value"].tolist() == [20.0] and ma["node/scalar"].item() == 3.0


def test_final_rewards_zero_nan_and_replace_truncated():
    rewards, truncated = torch.tensor([float("nan"), 0.5, 1.0]), torch.tensor([False, True, False])
    assert final_rewards(rewards, truncated, None).tolist() == [0.0, 0.5, 1.0]
    assert final_rewards(rewards, truncated, -1.0).tolist() == [0.0, -1.0, 1.0]


def test_anchors_per_sample_offsets_and_the_mixed_gate():
    # G = 3, two prompts, every response 3 tokens long. Per-sample offsets: row i gets offset 1 + i % 2.
    # final [1, 1, 0 | 0, 0, 0]: rows 0 and 1 each have siblings {1, 0} (mixed: open); row 2 has {1, 1} and rows
    # 3..5 have {0, 0} (closed: their interior anchor collapses to T = 3 and is not continued)
    rollout = tiny_rollout([[1, 1, 1]] * 6, group_size=3)
    drawn = []

    def draw(n):
        drawn.append(n)
        return torch.tensor([[1 + i % 2] for i in range(n)])

    request = ContinuationPlan(num_continuations=2, num_anchors=1, anchor_offsets=torch.tensor([2]),
                               draw_offsets=draw, gate_mixed=True)
    collector = Collector(FakeEngine(), torch.nn.Identity(), CountingScore(), torch.device("cpu"))
    positions, valid = collector.anchors(request, rollout, torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0]))
    assert drawn == [6]
    assert positions.tolist() == [[0, 1, 3], [0, 2, 3], [0, 3, 3], [0, 3, 3], [0, 3, 3], [0, 3, 3]]
    assert valid[:, 1].tolist() == [True, True, False, False, False, False]


def test_anchors_with_the_unsolved_gate():
    # G = 3, final [1, 1, 0 | 0, 0, 0 | 1, 1, 1], threshold 1, fixed offset 2, responses 3 tokens long.
    # Open where a sibling is below 1: rows 0, 1 (sibling 2 failed) and every row of the all-failed group 3..5;
    # closed for row 2 (siblings {1, 1}) and the solved group 6..8 (anchor collapses to T = 3).
    rollout = tiny_rollout([[1, 1, 1]] * 9, group_size=3)
    request = ContinuationPlan(num_continuations=2, num_anchors=1, anchor_offsets=torch.tensor([2]),
                               gate_unsolved_below=1.0)
    collector = Collector(FakeEngine(), torch.nn.Identity(), CountingScore(), torch.device("cpu"))
    final = torch.tensor([1.0, 1, 0, 0, 0, 0, 1, 1, 1])
    positions, valid = collector.anchors(request, rollout, final)
    assert valid[:, 1].tolist() == [True, True, False, True, True, True, False, False, False]
    assert positions[:, 1].tolist() == [2, 2, 3, 2, 2, 2, 3, 3, 3]


@pytest.mark.parametrize("gate_truncated_reward, expected", [
    (None, [False, True, True, False, True, True, True, True, False]),
    (0.0, [False, False, False, False, True, True, True, False, True]),
])
def test_the_mixed_gate_reads_truncated_siblings_as_gate_truncated_reward(gate_truncated_reward, expected):
    # G = 3, final [1, 0, 0 | 1, 0, 0 | 1, 1, 0]; rows 0 and 6 are truncated (full masks), their 1 a lucky cut-off.
    # Read as they score: rows 1, 2 see {1, 0} (open), row 0 sees {0, 0}; group 2 as group 1; in group 3 rows 6, 7
    # see {1, 0} (open), row 8 sees {1, 1}. With truncated siblings read as 0: group 1 is [0, 0, 0] to the gate (all
    # closed); group 3 is [0, 1, 0]: rows 6 and 8 see {1, 0} (open), row 7 sees {0, 0}. Group 2 has no truncation.
    truncated = {0, 6}
    rollout = tiny_rollout([[1, 1, 1] if i in truncated else [1, 1, 0] for i in range(9)], group_size=3)
    request = ContinuationPlan(num_continuations=2, num_anchors=1, anchor_offsets=torch.tensor([1]), gate_mixed=True,
                               gate_truncated_reward=gate_truncated_reward)
    collector = Collector(FakeEngine(), torch.nn.Identity(), CountingScore(), torch.device("cpu"))
    final = torch.tensor([1.0, 0, 0, 1, 0, 0, 1, 1, 0])
    positions, valid = collector.anchors(request, rollout, final)
    assert valid[:, 1].tolist() == expected
    ends = [3 if i in truncated else 2 for i in range(9)]
    assert positions[:, 1].tolist() == [1 if open_ else end for open_, end in zip(expected, ends, strict=True)]
    assert final.tolist() == [1.0, 0, 0, 1, 0, 0, 1, 1, 0]  # the estimator's rewards are not touched


def test_continuation_scores_in_one_call_with_the_truncated_reward():
    # 3 continuations in one reward call: CountingScore gives 0, 1, 2; the truncated one (index 1) gets -1 instead
    rollout = tiny_rollout([[1, 1, 0]] * 2, group_size=2)
    cont = Continuations(sample_index=torch.tensor([0, 0, 1]), anchor_column=torch.tensor([1, 1, 1]),
                         completion_ids=torch.full((3, 2), 5), completion_mask=torch.ones(3, 2, dtype=torch.long),
                         completions=["x", "y", "z"], generated_tokens=3, num_calls=1,
                         truncated=torch.tensor([False, True, False]))
    score = CountingScore()
    collector = Collector(FakeEngine(), torch.nn.Identity(), score, torch.device("cpu"))
    request = ContinuationPlan(num_continuations=3, num_anchors=1, truncated_reward=-1.0)
    assert collector.score_continuations(request, rollout, cont).tolist() == [0.0, -1.0, 2.0]
    assert score.sizes == [3]
    plain = replace(request, truncated_reward=None)
    assert collector.score_continuations(plain, rollout, cont).tolist() == [0.0, 1.0, 2.0]


def episode_rollout_rows() -> Rollout:
    # two 6-token episodes of one prompt (G = 2): row 0 = model, model, env, env, model, model (turn 2 starts at 4);
    # row 1 = one turn of 6 model tokens (no observation, so no turn start after the first)
    rollout = tiny_rollout([[1] * 6] * 2, group_size=2)
    rollout.loss_mask = torch.tensor([[1, 1, 0, 0, 1, 1], [1] * 6])
    return rollout


def test_turn_anchors_sit_at_the_starts_of_later_turns():
    # M = 1: row 0's anchor is the start of turn 2 (4); row 1 has no second turn, its anchor pads to T = 6 (invalid)
    request = ContinuationPlan(num_continuations=2, num_anchors=1, turn_anchors=True)
    collector = Collector(FakeEngine(), torch.nn.Identity(), CountingScore(), torch.device("cpu"))
    positions, valid = collector.anchors(request, episode_rollout_rows(), torch.zeros(2))
    assert positions.tolist() == [[0, 4, 6], [0, 6, 6]]
    assert valid[:, 1].tolist() == [True, False]


def test_turn_anchors_need_an_episode_rollout():
    request = ContinuationPlan(num_continuations=2, num_anchors=1, turn_anchors=True)
    collector = Collector(FakeEngine(), torch.nn.Identity(), CountingScore(), torch.device("cpu"))
    with pytest.raises(ValueError, match="turn_anchors"):
        collector.anchors(request, tiny_rollout([[1, 1, 1]] * 2, group_size=2), torch.zeros(2))


def test_continuations_of_episodes_go_on_with_the_environment(monkeypatch):
    # with an environment the K continuations come from episode_continuations (the collector's env and episode
    # limits, the turn anchors); their own metadata is what the reward reads, in one call of size K = 2
    seen = []

    def fake_episode_continuations(engine, policy, environment, cfg, rollout, positions, rows, cols, k, sampling):
        seen.append((environment, cfg, positions[rows, cols].tolist(), k))
        return Continuations(sample_index=rows.repeat_interleave(k), anchor_column=cols.repeat_interleave(k),
                             completion_ids=torch.full((k, 6), 5), completion_mask=torch.ones(k, 6, dtype=torch.long),
                             completions=["x"] * k, generated_tokens=4, num_calls=2,
                             metadata=[{"env_reward": float(i)} for i in range(k)])

    monkeypatch.setattr("lightning_trepo.rollout.collect.episode_continuations", fake_episode_continuations)
    env, cfg, score = Scripted(turns=2), EpisodeConfig(max_turns=3), MetadataScore()
    collector = Collector(FakeEngine(), torch.nn.Identity(), score, torch.device("cpu"), environment=env, episode=cfg)
    plan = RolloutPlan(group_size=2, continuations=ContinuationPlan(num_continuations=2, num_anchors=1,
                                                                    turn_anchors=True))
    scored = collector.continuations(plan, episode_rollout_rows(), torch.zeros(2))
    assert len(seen) == 1 and seen[0][0] is env and seen[0][1] is cfg and seen[0][2:] == ([4], 2)
    assert score.metadata == [[{"env_reward": 0.0}, {"env_reward": 1.0}]]
    assert scored.scores.tolist() == [0.0, 1.0] and scored.stats()["continuation_tokens"] == 4.0


class MetadataScore:
    """Reward = the row's ``env_reward``; records every call's metadata."""

    def __init__(self) -> None:
        self.metadata: list[list[dict]] = []

    def __call__(self, samples) -> RewardOutput:
        self.metadata.append(list(samples.metadata))
        return RewardOutput(torch.tensor([m["env_reward"] for m in samples.metadata]), {})


def test_generate_plays_episodes_for_samples_greedy_baseline_and_validation():
    # with an environment, generate returns episodes (loss mask 0 on the observations) for the samples, for ReMax's
    # greedy baseline and for validation's greedy plan; greedy episodes are deterministic (Scripted is), so the
    # baseline's episodes equal validation's token for token
    model, tok = load_policy(PolicyConfig(tiny=TinyModelConfig(n_layer=1, n_embd=32, n_head=2, seed=3)))
    prompts = ["12+3=", "4+5="]
    batch = {"prompts": prompts, "prompt_ids": [tok(p)["input_ids"] for p in prompts], "metadata": [{}, {}]}
    collector = Collector(RolloutEngine(tok), model, CountingScore(), torch.device("cpu"), environment=Scripted(2),
                          episode=EpisodeConfig(max_turns=3, max_total_tokens=24))
    sampling = SamplingConfig(max_new_tokens=4)
    torch.manual_seed(0)
    rollout = collector.generate(RolloutPlan(group_size=2, sampling=sampling, greedy_baseline=True), batch)
    validation = collector.generate(RolloutPlan(group_size=1, sampling=sampling, greedy=True), batch)
    for r, n in ((rollout, 4), (rollout.greedy, 2), (validation, 2)):
        assert r is not None and r.loss_mask is not None and r.num_samples == n
        assert all("episode_turns" in m for m in r.metadata)
        assert (r.completion_mask.bool() & ~r.loss_mask.bool()).any()  # the observations: attended, not trained
    assert rollout.greedy is not None and torch.equal(rollout.greedy.completion_ids, validation.completion_ids)
