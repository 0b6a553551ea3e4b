"""Multi-turn episodes on the shipped tiny model: exact token ids, loss mask, limits, failing environments."""
from __future__ import annotations

import time

import pytest
import torch

from lightning_trepo.algorithms.anchors import turn_anchor_positions, turn_boundaries
from lightning_trepo.policy import PolicyConfig, TinyModelConfig, load_policy
from lightning_trepo.rollout.engine import RolloutEngine, SamplingConfig
from lightning_trepo.rollout.episodes import (
    EpisodeConfig,
    EpisodeState,
    episode_rollout,
    run_episodes,
)
from tests.envs.scripted import Scripted

PROMPTS = ["12+3=", "4+5=", "7+7="]


@pytest.fixture(scope="module")
def tiny():
    return load_policy(PolicyConfig(tiny=TinyModelConfig(n_layer=1, n_embd=32, n_head=2, seed=3)))


class Recording(RolloutEngine):
    """An engine that keeps every generate call's sampled ids (per row, up to its mask)."""

    def __init__(self, tokenizer) -> None:
        super().__init__(tokenizer)
        self.calls: list[list[list[int]]] = []

    def generate(self, *args, **kwargs):
        gen = super().generate(*args, **kwargs)
        rows = zip(gen.completion_ids, gen.completion_mask, strict=True)
        self.calls.append([row[m.bool()].tolist() for row, m in rows])
        return gen


def play(tiny, env, prompts=PROMPTS, max_new_tokens=5, seed=0, engine=None, **cfg):
    model, tok = tiny
    engine = engine or RolloutEngine(tok)
    torch.manual_seed(seed)
    ids = [tok(p)["input_ids"] for p in prompts]
    return engine, run_episodes(engine, model, env, ids, list(prompts), [{} for _ in prompts],
                                SamplingConfig(max_new_tokens=max_new_tokens), EpisodeConfig(**cfg))


def test_trained_ids_are_the_sampled_ids_turn_by_turn_and_env_tokens_have_loss_mask_0(tiny):
    _, tok = tiny
    engine, ep = play(tiny, Scripted(turns=3), engine=Recording(tok), max_turns=4, max_total_tokens=64)
    assert len(engine.calls) == 3  # one batched generate call per turn, all episodes together
    for i, state in enumerate(ep.states):
        assert state.turn_starts and len(state.turn_starts) == 3 and not state.truncated and state.env_reward == 3.0
        bounds = [*state.turn_starts[1:], len(state.ids)]
        for k, (start, _) in enumerate(zip(state.turn_starts, bounds, strict=True)):
            sampled = engine.calls[k][i]
            assert state.ids[start:start + len(sampled)] == sampled  # the very ids the policy sampled
            assert ep.loss_mask[i, start:start + len(sampled)].tolist() == [1] * len(sampled)
            assert state.actions[k] == tok.decode(sampled, skip_special_tokens=True)  # what the env was shown
            if k < 2:  # after turns 1 and 2 the env's text follows, tokenised alone, loss mask 0
                obs = tok(f"\nobs{k + 1}\n", add_special_tokens=False)["input_ids"]
                end = start + len(sampled)
                assert state.ids[end:end + len(obs)] == obs and end + len(obs) == bounds[k]
                assert ep.loss_mask[i, end:end + len(obs)].tolist() == [0] * len(obs)
        assert ep.completion_mask[i].sum() == len(state.ids) and ep.loss_mask[i].sum() == sum(map(len, (
            engine.calls[k][i] for k in range(3))))


def test_max_turns_and_max_total_tokens(tiny):
    _, ep = play(tiny, Scripted(turns=10), max_turns=2, max_total_tokens=100)
    assert ep.truncated.all() and all(len(s.turn_starts) == 2 for s in ep.states)
    _, ep = play(tiny, Scripted(turns=10), max_new_tokens=5, max_turns=10, max_total_tokens=12)
    # 12 completion tokens in all (model + env): every episode is cut there (or ends earlier by max_turns), truncated
    assert ep.truncated.all() and ep.completion_mask.sum(-1).max() <= 12
    # an episode always ends on the model's own tokens: a trailing observation no turn reads is left out (the
    # reward would otherwise read the environment's text as the final answer)
    for ep_ in (ep, play(tiny, Scripted(turns=10), max_turns=2, max_total_tokens=100)[1]):
        last = ep_.completion_mask.sum(-1) - 1
        assert ep_.loss_mask.gather(1, last[:, None]).eq(1).all()


def test_episode_rollout_rows_groups_and_metadata(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    ids = [tok(p)["input_ids"] for p in PROMPTS[:2]]
    r = episode_rollout(RolloutEngine(tok), model, Scripted(turns=2), EpisodeConfig(max_turns=3, max_total_tokens=64),
                        3, SamplingConfig(max_new_tokens=4), PROMPTS[:2], ids, [{"answer": "15"}, {"answer": "9"}])
    assert r.num_samples == 6 and r.group_index.tolist() == [0, 0, 0, 1, 1, 1] and r.loss_mask is not None
    assert [m["answer"] for m in r.metadata] == ["15"] * 3 + ["9"] * 3
    assert all(m["episode_turns"] == 2 and m["env_reward"] == 2.0 for m in r.metadata)
    assert all("obs1" in c for c in r.completions)
    assert r.metadata[0] is not r.metadata[1]  # each row its own dict
    for n, meta in enumerate(r.metadata):  # final_turn: the model's last turn only, decoded from its sampled ids
        last = meta["episode_turn_starts"][-1]
        want = tok.decode(r.completion_ids[n, last:int(r.lengths[n])].tolist(), skip_special_tokens=True)
        assert meta["final_turn"] == want and "obs" not in meta["final_turn"]


@pytest.mark.parametrize("fault", ["raise", "nontext", "hang", "reset"])
def test_a_failing_environment_fails_its_episode_only(tiny, fault):
    t0 = time.perf_counter()
    _, ep = play(tiny, Scripted(turns=2, fault=fault), prompts=["12+3=", "bad", "7+7="], env_timeout_s=0.5)
    assert time.perf_counter() - t0 < 30.0  # a hung env (it sleeps 60 s) is abandoned after env_timeout_s
    bad = ep.states[1]
    what = "reset" if fault == "reset" else "step"
    assert bad.error is not None and bad.error.startswith(f"environment Scripted (episode 1): {what} failed")
    assert ep.loss_mask[1].sum() == 0  # nothing of the failed episode is trained on
    for good in (0, 2):
        assert ep.states[good].error is None and len(ep.states[good].turn_starts) == 2
        assert ep.loss_mask[good].sum() > 0


def test_resumed_prefix_replays_actions_into_a_fresh_env(tiny):
    # a prefix with one finished turn: the env replays that action (seen = [a]), the loop plays turn 2 and stops
    model, tok = tiny
    prefix = EpisodeState(ids=tok("ab\nobs1\n", add_special_tokens=False)["input_ids"], loss=[1, 1] + [0] * 6,
                          turn_starts=[0], actions=["ab"])
    env = Scripted(turns=2)
    torch.manual_seed(0)
    ep = run_episodes(RolloutEngine(tok), model, env, [tok("1+1=")["input_ids"]], ["1+1="], [{}],
                      SamplingConfig(max_new_tokens=3), EpisodeConfig(), states=[prefix])
    state = ep.states[0]
    assert state.turn_starts == [0, 8] and state.done and not state.truncated and state.env_reward == 2.0
    assert ep.loss_mask[0, :8].tolist() == [1, 1, 0, 0, 0, 0, 0, 0] and ep.loss_mask[0, 8:].all()


def test_turn_boundaries():
    # model model env env model pad: the last env token (index 3) ends a boundary; anchor s = 4 = turn 2's start
    loss = torch.tensor([[1, 1, 0, 0, 1, 0], [1, 1, 1, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0]])  # row 1 ends on env tokens: no boundary
    assert turn_boundaries(loss, mask).tolist() == [[False, False, False, True, False, False], [False] * 6]
    # M = 2 turn anchors: row 0 has one (s = 4) then a padding anchor at T = 5; row 1 none: both at T = 5
    positions, valid = turn_anchor_positions(loss, mask, 2)
    assert positions.tolist() == [[0, 4, 5, 5], [0, 5, 5, 5]]
    assert valid.tolist() == [[True, True, False, True], [True, False, False, True]]
