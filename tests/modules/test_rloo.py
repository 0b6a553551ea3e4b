"""RLOO: leave-one-out advantages; the KL either folded into the reward before the baseline or added to the loss."""
from __future__ import annotations

import pytest
import torch

from lightning_trepo import RLOO, UpdateConfig
from reward_models import NumericAnswer
from tests.helpers import TINY, rollout_cfg, tiny_rollout


def make(kl_in_reward: bool = True, group_size: int = 2, **update) -> RLOO:
    return RLOO(reward=NumericAnswer(answer_key="answer"), policy=TINY, rollout=rollout_cfg(group_size=group_size),
                update=UpdateConfig(**update), kl_in_reward=kl_in_reward)


def kl_rollout():
    rollout = tiny_rollout([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], group_size=2)
    rollout.old_logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0], [-2.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])
    # per-token k1 = log π_old - log π_ref; the 9.0s sit on padding and must be ignored
    kl = torch.tensor([[0.2, 0.4, 0.6], [0.2, 0.2, 9.0], [1.0, 9.0, 9.0], [0.0, 0.0, 0.0]])
    rollout.ref_logprobs = rollout.old_logprobs - kl
    return rollout


def test_kl_in_reward_hand_derived():
    module = make(kl_coef=0.5, kl_estimator="k1")
    rollout = kl_rollout()
    rewards = torch.tensor([1.0, 0.0, 2.0, 2.0])
    # per-sequence KL sums over real tokens: 1.2, 0.4, 1.0, 0.0
    # penalised rewards r - 0.5*KL: 0.4, -0.2, 1.5, 2.0
    # leave-one-out with G = 2 (baseline = the other sample): 0.4-(-0.2)=0.6, -0.6, 1.5-2.0=-0.5, 0.5
    out = module.compute_advantages(rollout, rewards)
    adv, metrics = out.advantages, out.metrics
    torch.testing.assert_close(adv, torch.tensor([0.6, -0.6, -0.5, 0.5]), rtol=0, atol=1e-6)
    assert metrics["kl/sequence"].item() == pytest.approx(0.65)  # mean of 1.2, 0.4, 1.0, 0.0


def test_kl_in_loss_leaves_rewards_alone():
    module = make(kl_in_reward=False, kl_coef=0.5, kl_estimator="k1")
    rewards = torch.tensor([1.0, 0.0, 2.0, 2.0])
    # plain leave-one-out: 1-0, 0-1, 2-2, 2-2
    torch.testing.assert_close(module.compute_advantages(kl_rollout(), rewards).advantages,
                               torch.tensor([1.0, -1.0, 0.0, 0.0]))


@pytest.mark.parametrize("kl_in_reward", [True, False])
def test_kl_term_in_the_loss_only_when_not_in_the_reward(kl_in_reward):
    module = make(kl_in_reward=kl_in_reward, kl_coef=0.5)
    module.configure_model()
    rollout = tiny_rollout([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], group_size=2)
    rollout.old_logprobs, _ = module.behaviour_logprobs(rollout)
    rollout.ref_logprobs = module.no_grad_logprobs(module.ref_model, rollout)
    module.compute_advantages(rollout, torch.tensor([1.0, 0.0, 2.0, 2.0])).write_into(rollout)
    assert ("kl" in module.compute_loss(rollout).metrics) is (not kl_in_reward)


def test_reference_only_with_kl_and_group_size_checked():
    plain = make()
    plain.configure_model()
    assert plain.ref_model is None
    with_kl = make(kl_coef=0.1)
    with_kl.configure_model()
    assert with_kl.ref_model is not None and with_kl.rollout_plan().need_ref_logprobs
    with pytest.raises(ValueError, match="group_size"):
        make(group_size=1)
