"""DAPO dynamic sampling on the rollout path: filtering, refilling, the cap on extra rounds, and training with it."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from lightning_trepo import GRPO, UpdateConfig
from lightning_trepo.rollout.dynamic_sampling import concat_rollouts, dynamic_sampling
from reward_models import FunctionReward
from tests.helpers import TINY, datamodule, rollout_cfg, tiny_rollout, trainer


def fake_sampler(rounds: list[list[float]], prompt_lens: list[int]):
    """``sample(batch)`` returning, on its k-th call, a G = 2 rollout of two prompts with the rewards ``rounds[k]``
    and prompts of ``prompt_lens[k]`` tokens; the per-sample reward metric ``tag`` = 10·round + sample."""
    calls = []

    def sample(batch):
        k = len(calls)
        calls.append(batch["id"])
        rollout = tiny_rollout([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]], group_size=2, prompt_len=prompt_lens[k],
                               seed=k)
        rollout.timings["generate"] = 1.0
        tags = torch.tensor([10.0 * k + i for i in range(4)])
        return rollout, torch.tensor(rounds[k]), {"tag": tags, "scalar": torch.tensor(7.0)}

    return sample, calls


def refills(start: int = 1):
    while True:
        yield {"prompt_ids": [[1], [2]], "id": start}
        start += 1


def test_drops_all_equal_groups_and_refills_until_the_batch_is_full():
    # round 0: groups [1, 1] (all equal, dropped) and [0, 1] (kept); round 1: [0.5, 0.5] dropped, [1, 0] kept.
    # 2 informative groups after one extra round: the rollout is round 0's group 1 then round 1's group 1
    sample, calls = fake_sampler([[1.0, 1.0, 0.0, 1.0], [0.5, 0.5, 1.0, 0.0]], prompt_lens=[3, 5])
    rollout, rewards, components, metrics = dynamic_sampling(sample, {"prompt_ids": [[1], [2]], "id": 0}, refills(),
                                                              max_extra_rounds=4, pad_id=0)
    assert calls == [0, 1]
    assert rewards.tolist() == [0.0, 1.0, 1.0, 0.0]
    assert components["tag"].tolist() == [2.0, 3.0, 12.0, 13.0] and components["scalar"].item() == 7.0
    assert rollout.group_index.tolist() == [0, 0, 1, 1] and rollout.num_samples == 4
    assert rollout.timings["generate"] == 2.0  # both rounds' generation time
    assert metrics["dynamic/rounds"].item() == 1.0
    assert metrics["dynamic/informative_frac"].item() == 0.5 and metrics["dynamic/filled_frac"].item() == 0.0
    # prompts of 3 and 5 tokens: left padded to 5, completions right padded; the samples are the originals
    first = tiny_rollout([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]], group_size=2, prompt_len=3, seed=0)
    assert rollout.prompt_ids.shape == (4, 5)
    assert torch.equal(rollout.prompt_ids[:2, 2:], first.prompt_ids[2:]) and (rollout.prompt_mask[:2, :2] == 0).all()
    assert torch.equal(rollout.completion_ids[:2], first.completion_ids[2:])
    assert rollout.completions == ["c2", "c3", "c2", "c3"]


def test_the_cap_on_extra_rounds_fills_with_dropped_groups():
    # every group all equal: 1 extra round allowed, then the first two dropped groups fill the batch
    sample, calls = fake_sampler([[1.0, 1.0, 0.0, 0.0], [2.0, 2.0, 3.0, 3.0], [9.0, 0.0, 9.0, 0.0]], [3, 3, 3])
    rollout, rewards, _, metrics = dynamic_sampling(sample, {"prompt_ids": [[1], [2]], "id": 0}, refills(), 1, 0)
    assert calls == [0, 1]  # never a third round
    assert rewards.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert metrics["dynamic/filled_frac"].item() == 1.0 and metrics["dynamic/informative_frac"].item() == 0.0
    # no refill stream (a module outside a Trainer): filter and fill only
    sample, calls = fake_sampler([[1.0, 1.0, 0.0, 1.0]], [3])
    rollout, rewards, _, metrics = dynamic_sampling(sample, {"prompt_ids": [[1], [2]], "id": 0}, None, 4, 0)
    assert calls == [0] and rewards.tolist() == [0.0, 1.0, 1.0, 1.0]  # the informative group first, then the filler
    assert metrics["dynamic/filled_frac"].item() == 0.5


def test_concat_refuses_rollouts_with_log_probs():
    a = tiny_rollout([[1, 0]], group_size=1)
    b = tiny_rollout([[1, 1]], group_size=1)
    b.old_logprobs = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="no baseline or log-probs"):
        concat_rollouts([a, b], pad_id=0)


def test_grpo_trains_two_steps_with_dynamic_sampling(tmp_path):
    # first_char_odd: about half the groups of two are informative, so the first batch of 2 prompts is short and
    # the data module's refill stream is sampled; the rollout trained on holds only informative groups
    pl.seed_everything(0)
    module = GRPO(reward=FunctionReward("tests.modules.rewards.first_char_odd"), policy=TINY,
                  # eager generate: the seeded samples the expected rounds below were read from
                  rollout=rollout_cfg(group_size=2, dynamic_sampling=True, max_extra_rounds=3, decoder="eager"),
                  update=UpdateConfig(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    t = trainer(tmp_path)
    t.fit(module, datamodule=datamodule(batch_size=2))
    m = {k: float(v) for k, v in t.callback_metrics.items() if k.startswith("dynamic/")}
    # the last rollout (seeded): one of the first 2 groups informative, one refill round of 2 more prompts
    assert m == {"dynamic/rounds": 1.0, "dynamic/informative_frac": 0.5, "dynamic/filled_frac": 0.0}
    grouped = module._rollout.rewards.view(-1, 2)
    assert grouped.shape == (2, 2) and bool((grouped[:, 0] != grouped[:, 1]).all())
    assert module._rollout.advantages.abs().min() > 0.5  # ±1/sqrt(2) for every sample: no zero-advantage group
