"""REINFORCE: advantages are the rewards, minus a running-mean baseline of PAST rollouts that is checkpointed."""
from __future__ import annotations

import pytest
import torch

from lightning_trepo import REINFORCE
from reward_models import NumericAnswer
from tests.helpers import TINY, rollout_cfg, tiny_rollout


def make(**kw) -> REINFORCE:
    return REINFORCE(reward=NumericAnswer(answer_key="answer"), policy=TINY, rollout=rollout_cfg(group_size=2), **kw)


ROLLOUT = tiny_rollout([[1, 1], [1, 0], [1, 1], [1, 1]], group_size=2)


def test_advantages_are_the_rewards_without_baseline():
    rewards = torch.tensor([0.5, -1.0, 2.0, 0.0])
    module = make()
    torch.testing.assert_close(module.compute_advantages(ROLLOUT, rewards).advantages, rewards, rtol=0, atol=0)
    assert "baseline_mean" not in module.state_dict()


def test_running_mean_baseline_uses_only_past_rollouts():
    module = make(baseline="running_mean", baseline_momentum=0.5)
    r1, r2 = torch.tensor([0.0, 2.0, 1.0, 1.0]), torch.tensor([3.0, 3.0, 2.0, 4.0])
    r3 = torch.tensor([1.0, 0.0, 0.0, 0.0])
    # rollout 1: no history, b = 0. EMA s1 = 0.5*0 + 0.5*mean(r1)=0.5*1 = 0.5; bias-corrected b = 0.5/(1-0.5) = 1
    torch.testing.assert_close(module.compute_advantages(ROLLOUT, r1).advantages, r1)
    # rollout 2: A = r2 - 1. s2 = 0.5*0.5 + 0.5*mean(r2)=0.5*3 = 1.75; b = 1.75/(1-0.25) = 7/3
    torch.testing.assert_close(module.compute_advantages(ROLLOUT, r2).advantages, r2 - 1.0)
    out = module.compute_advantages(ROLLOUT, r3)
    advantages, metrics = out.advantages, out.metrics
    torch.testing.assert_close(advantages, r3 - 7.0 / 3.0)
    assert metrics["reward/baseline"].item() == pytest.approx(7.0 / 3.0)


def test_running_mean_is_saved_and_restored_with_the_module_state():
    module = make(baseline="running_mean", baseline_momentum=0.9)
    module.compute_advantages(ROLLOUT, torch.tensor([1.0, 2.0, 3.0, 4.0]))
    state = module.state_dict()  # what Lightning writes into checkpoints
    assert state["baseline_updates"].item() == 1 and state["baseline_mean"].item() == pytest.approx(0.25)
    resumed = make(baseline="running_mean", baseline_momentum=0.9)
    resumed.load_state_dict(state, strict=False)  # strict=False: the policy is not built in this test
    torch.testing.assert_close(resumed.running_baseline(), torch.tensor(2.5))


def test_no_reference_model_and_bad_baseline_named():
    module = make()
    module.configure_model()
    assert module.ref_model is None
    with pytest.raises(ValueError, match="baseline"):
        make(baseline="median")
