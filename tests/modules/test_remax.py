"""ReMax: the greedy baseline is scored with the samples in ONE reward call; advantage = r - r(greedy)."""
from __future__ import annotations

import pytest
import torch

from lightning_trepo import ReMax, UpdateConfig
from reward_models import Reward, Samples
from tests.helpers import TINY, rollout_cfg


def char_score(completions: list[str]) -> list[float]:
    return [sum(map(ord, c)) / max(len(c), 1) / 100.0 for c in completions]


class CountingReward(Reward):
    """Mean character code of the completion (varies between completions); records each call's size."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def score(self, samples: Samples) -> list[float]:
        self.calls.append(len(samples))
        return char_score(samples.completions)


def test_samples_and_greedy_baseline_scored_in_one_call():
    torch.manual_seed(0)
    reward = CountingReward()
    reward.deduplicate = False  # count every sample the tree is asked to score
    module = ReMax(reward=reward, policy=TINY, rollout=rollout_cfg(group_size=3, max_new_tokens=5),
                   update=UpdateConfig())
    module.configure_model()
    assert module.rollout_plan().greedy_baseline and module.ref_model is None
    prompts = ["12+30=", "7+5="]
    batch = {"prompts": prompts, "prompt_ids": [module.tokenizer.encode(p) for p in prompts], "metadata": [{}, {}]}
    rollout, metrics = module.make_rollout(batch)
    assert reward.calls == [3 * 2 + 2]  # N = B*G samples + B greedy responses, one call
    greedy = rollout.greedy
    expected_greedy = torch.tensor(char_score(greedy.completions))
    torch.testing.assert_close(rollout.greedy_rewards, expected_greedy)
    sampled = torch.tensor(char_score(rollout.completions))
    # A_i = r_i - r(greedy response of prompt i // G)
    torch.testing.assert_close(rollout.advantages, sampled - expected_greedy.repeat_interleave(3))
    assert metrics["reward/greedy"].item() == pytest.approx(expected_greedy.mean().item())
    # the logged total covers the samples only, not the greedy responses
    assert metrics["reward/total"].item() == pytest.approx(sampled.mean().item())
