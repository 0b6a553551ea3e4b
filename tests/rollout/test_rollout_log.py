"""Training's rollout log is re-scorable by the reward layer: same rows, same rewards."""
from __future__ import annotations

import torch

from lightning_trepo import GRPO
from reward_models import FunctionReward
from reward_models.rollouts import read_rollouts
from tests.helpers import TINY, rollout_cfg


def test_logged_rollouts_rescore_to_the_trained_rewards(tmp_path):
    torch.manual_seed(0)
    reward = FunctionReward("tests.modules.rewards.length_reward")
    module = GRPO(reward=reward, policy=TINY, rollout=rollout_cfg(group_size=3, log_path=str(tmp_path / "r.jsonl")))
    module.configure_model()
    tok = module.tokenizer
    prompts = ["1+2=", "30+4="]
    batch = {"prompts": prompts, "metadata": [{"answer": "3"}, {"answer": "34"}],
             "prompt_ids": [tok(p, add_special_tokens=False).input_ids for p in prompts]}
    first, _ = module.make_rollout(batch)
    second, _ = module.make_rollout(batch)
    samples = read_rollouts(tmp_path / "r.jsonl")
    assert len(samples) == 12 and samples.prompts[:3] == ["1+2="] * 3
    assert samples.group_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]  # unique across steps
    assert samples.metadata[3] == {"answer": "34"}
    rescored = reward(samples).rewards
    torch.testing.assert_close(rescored, torch.cat([first.rewards, second.rewards]))
    # token ids survive, so token-length rewards re-score identically
    assert samples.completion_mask.sum().item() == int(first.completion_mask.sum() + second.completion_mask.sum())
