"""Training's rollout log is re-scorable by the reward layer: same rows, same rewards."""
from __future__ import annotations

import torch

from lightning_trepo import GRPO
from lightning_trepo.rollout.metrics import step_metrics, timed
from reward_models import FunctionReward
from reward_models.rollouts import read_rollouts
from tests.helpers import TINY, rollout_cfg, tiny_rollout


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


def test_timed_adds_the_seconds_of_each_phase(monkeypatch):
    clock = iter([10.0, 10.5, 20.0, 20.25])  # two timed bodies: 0.5 s then 0.25 s
    monkeypatch.setattr("lightning_trepo.rollout.metrics.time.perf_counter", lambda: next(clock))
    seconds = {"generate": 1.0}
    with timed(seconds, "score"):
        pass
    with timed(seconds, "score"):
        pass
    assert seconds == {"generate": 1.0, "score": 0.75}


def test_step_metrics_report_phases_and_generated_tokens_per_second():
    rollout = tiny_rollout([[1, 1, 1], [1, 0, 0]], group_size=2)  # 4 generated tokens
    rollout.timings.update(generate=2.0, score=0.5, logprobs=0.25)
    metrics = step_metrics(rollout, torch.tensor([1.0, 3.0]), {}, generate_calls=3)
    assert float(metrics["perf/tokens_per_s"]) == 2.0  # 4 tokens / 2 s
    assert float(metrics["time/score"]) == 0.5 and float(metrics["rollout/generate_calls"]) == 3.0
    assert float(metrics["reward/total"]) == 2.0 and float(metrics["completion/length_max"]) == 3.0
