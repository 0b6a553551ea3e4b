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
    _, t = _fit(tmp_path, validate=True, val_num_samples=3)
    for key in ("val/accuracy", "val/reward", "val/pass@3", "val/reward_sampled", "val/length"):
        assert key in t.callback_metrics, key
    acc, pass_n = float(t.callback_metrics["val/accuracy"]), float(t.callback_metrics["val/pass@3"])
    assert 0.0 <= acc <= 1.0 and 0.0 <= pass_n <= 1.0


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
