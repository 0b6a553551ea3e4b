"""TRePO on multi-turn episodes: anchors at turn starts, continuations that go on with the environment."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from lightning_trepo import TRePO
from lightning_trepo.algorithms.anchors import turn_anchor_positions
from lightning_trepo.errors import ConfigError
from lightning_trepo.rollout.continuations import request_pairs
from lightning_trepo.rollout.engine import RolloutEngine, SamplingConfig
from lightning_trepo.rollout.episode_continuations import episode_continuations, prefix_state
from lightning_trepo.rollout.episodes import EpisodeConfig, episode_rollout
from reward_models import FunctionReward
from tests.envs.scripted import Scripted
from tests.helpers import TINY, datamodule, policy_params, trainer
from tests.modules.test_episodes_training import episode_cfg

CFG = EpisodeConfig(max_turns=4, max_total_tokens=40)


@pytest.fixture(scope="module")
def episodes():
    from lightning_trepo.policy import load_policy

    model, tok = load_policy(TINY)
    engine = RolloutEngine(tok)
    torch.manual_seed(0)
    prompts = ["12+3=", "4+5="]
    rollout = episode_rollout(engine, model, Scripted(turns=3), CFG, 2, SamplingConfig(max_new_tokens=4), prompts,
                              [tok(p)["input_ids"] for p in prompts], [{"answer": "15"}, {"answer": "9"}])
    return engine, model, rollout


def test_prefix_state_holds_the_turns_before_the_anchor(episodes):
    engine, _, rollout = episodes
    starts = rollout.metadata[0]["episode_turn_starts"]
    assert len(starts) == 3  # Scripted(turns=3) ends every episode after its third turn
    state = prefix_state(rollout, 0, starts[2], engine.tokenizer)
    assert state.turn_starts == starts[:2] and state.ids == rollout.completion_ids[0, :starts[2]].tolist()
    # the replayed actions are the decoded model tokens of turns 1 and 2 (their observations left out)
    ids, loss = state.ids, state.loss
    first = [i for i, m in zip(ids[:starts[1]], loss[:starts[1]], strict=True) if m]
    assert state.actions[0] == engine.tokenizer.decode(first, skip_special_tokens=True)
    assert rollout.completions[0].startswith(state.actions[0])


def test_continuations_continue_the_episode_with_the_environment(episodes):
    engine, model, rollout = episodes
    positions, valid = turn_anchor_positions(rollout.loss_mask, rollout.completion_mask, 2)
    starts = [m["episode_turn_starts"] for m in rollout.metadata]
    assert positions[:, 1:3].tolist() == [s[1:3] for s in starts]  # anchors = the starts of turns 2 and 3
    rows, cols = request_pairs(valid, fresh_start=False)
    torch.manual_seed(1)
    cont = episode_continuations(engine, model, Scripted(turns=3), CFG, rollout, positions, rows, cols, 2,
                                 SamplingConfig(max_new_tokens=4))
    assert cont.sample_index.numel() == 2 * rows.numel() and cont.metadata is not None
    for i, (n, col) in enumerate(zip(cont.sample_index.tolist(), cont.anchor_column.tolist(), strict=True)):
        s = int(positions[n, col])
        assert cont.completion_ids[i, :s].tolist() == rollout.completion_ids[n, :s].tolist()  # the exact prefix
        meta = cont.metadata[i]
        # the replayed env counts the prefix's turns: every continuation ends after 3 turns in all, env reward 3
        assert meta["episode_turns"] == 3 and meta["env_reward"] == 3.0 and meta["answer"] == ("15", "9")[n // 2]
        assert meta["episode_turn_starts"][: col] == starts[n][: col]
    assert cont.generated_tokens > 0


def test_trepo_turn_anchors_train_on_episodes(tmp_path):
    pl.seed_everything(0)
    module = TRePO(reward=FunctionReward("tests.modules.rewards.length_reward"), policy=TINY, rollout=episode_cfg(),
                   environment=Scripted(turns=3), anchor_mode="turns", num_anchors=2, num_continuations=2,
                   optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    module.configure_model()
    before = policy_params(module)
    t = trainer(tmp_path)
    t.fit(module, datamodule=datamodule())
    assert any(not torch.equal(before[k], v) for k, v in policy_params(module).items())
    rollout = module._rollout
    assert rollout.anchor_positions is not None and t.callback_metrics["trepo/continuation_tokens"] > 0
    for n, meta in enumerate(rollout.metadata):  # interior anchors sit at the turn starts after the first
        want = (meta["episode_turn_starts"][1:3] + [int(rollout.completion_mask[n].sum())] * 2)[:2]
        assert rollout.anchor_positions[n, 1:3].tolist() == want


@pytest.mark.parametrize(("env", "mode"), [(None, "turns"), (Scripted(), "uniform")])
def test_turn_anchors_and_environments_go_together(env, mode):
    with pytest.raises(ConfigError, match="anchor_mode"):
        TRePO(reward=FunctionReward("tests.modules.rewards.length_reward"), policy=TINY, rollout=episode_cfg(),
              environment=env, anchor_mode=mode)
