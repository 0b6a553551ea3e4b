"""Validation during fit: held-out accuracy / pass@n, and no side effect on training."""
from __future__ import annotations

import lightning.pytorch as pl
import torch

from lightning_trepo import GRPO
from lightning_trepo.data import BuiltinTaskSource
from reward_models import FunctionReward, Normalize
from tests.helpers import TINY, datamodule, policy_params, rollout_cfg, trainer


def _fit(tmp_path, validate: bool, val_num_samples: int = 2):
    pl.seed_everything(5)
    reward = Normalize(FunctionReward("tests.modules.rewards.length_reward"), mode="running")
    module = GRPO(reward=reward, policy=TINY, rollout=rollout_cfg(group_size=2, val_num_samples=val_num_samples),
                  optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    extra = {"val_source": BuiltinTaskSource(task="addition", split="test", size=8)} if validate else {}
    t = trainer(tmp_path, max_steps=3, val_check_interval=1, check_val_every_n_epoch=None,
                limit_val_batches=1 if validate else 0)
    t.fit(module, datamodule=datamodule(batch_size=2, val_batch_size=4, **extra))
    return module, t


def test_validation_logs_accuracy_and_pass_at_n(tmp_path):
    # reward = 1 iff the row's answer is even, whatever the completion: the first val batch (4 prompts) of the
    # addition test split has answers 136, 141, 20, 181, so greedy accuracy = pass@3 = mean reward = 2/4
    rows = BuiltinTaskSource(task="addition", split="test", size=8).load()[:4]
    expected = sum(int(r["answer"]) % 2 == 0 for r in rows) / 4
    assert expected == 0.5
    pl.seed_everything(5)
    module = GRPO(reward=FunctionReward("tests.modules.rewards.answer_is_even"), policy=TINY,
                  rollout=rollout_cfg(group_size=2, val_num_samples=3))
    t = trainer(tmp_path, max_steps=1, val_check_interval=1, check_val_every_n_epoch=None, limit_val_batches=1)
    t.fit(module, datamodule=datamodule(batch_size=2, val_batch_size=4,
                                        val_source=BuiltinTaskSource(task="addition", split="test", size=8)))
    m = t.callback_metrics
    for key in ("val/accuracy", "val/pass@3", "val/reward", "val/reward_sampled"):
        assert float(m[key]) == expected, key
    assert 1.0 <= float(m["val/length"]) <= 4.0  # greedy lengths within rollout_cfg's 4-token budget


def test_validation_counts_a_prompt_solved_only_at_the_threshold(tmp_path):
    # val_success_threshold 1.5 lies above every reward: no prompt is solved, while the mean reward stays 2/4
    module = GRPO(reward=FunctionReward("tests.modules.rewards.answer_is_even"), policy=TINY,
                  rollout=rollout_cfg(group_size=2, val_num_samples=0, val_success_threshold=1.5))
    t = trainer(tmp_path, max_steps=1, val_check_interval=1, check_val_every_n_epoch=None, limit_val_batches=1)
    t.fit(module, datamodule=datamodule(batch_size=2, val_batch_size=4,
                                        val_source=BuiltinTaskSource(task="addition", split="test", size=8)))
    assert float(t.callback_metrics["val/accuracy"]) == 0.0 and float(t.callback_metrics["val/reward"]) == 0.5


def test_greedy_only_validation_has_no_pass_at_n(tmp_path):
    _, t = _fit(tmp_path, validate=True, val_num_samples=0)
    assert "val/accuracy" in t.callback_metrics
    assert not any(k.startswith("val/pass@") for k in t.callback_metrics)


def test_validation_does_not_change_training(tmp_path):
    # Same seed, with and without a validation pass after every step: validation samples under a forked RNG
    # and restores the running-normalisation state, so the trained weights and reward statistics agree.
    with_val, _ = _fit(tmp_path / "a", validate=True)
    without, _ = _fit(tmp_path / "b", validate=False)
    a, b = policy_params(with_val), policy_params(without)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
    assert with_val.reward.state_dict() == without.reward.state_dict()
