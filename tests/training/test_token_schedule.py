"""``lr_scheduler.total_tokens``: the lr decays with the generated training tokens (the module's ``trained_tokens``),
not with optimizer steps, so algorithms that spend different tokens a step (TRePO's continuations) anneal alike per
token; the count skips validation and survives a resume."""
from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch import LightningModule

from lightning_trepo import GRPO
from lightning_trepo.training.checkpoints import PeriodicCheckpoint
from lightning_trepo.training.schedule import LRScheduleConfig, attach_lr_schedule, lr_factor
from reward_models import FunctionReward
from tests.helpers import TINY, datamodule, policy_params, rollout_cfg, trainer

LR = 1e-2
TOTAL = 60  # tokens; the tiny runs below generate at most 2 prompts x 2 samples x 4 tokens = 16 a step


@pytest.mark.parametrize("step, tokens, expected", [
    (0, 0, 1.0), (7, 0, 1.0),  # no tokens yet: no decay, whatever the step
    (3, 250, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))),  # p = 250/1000 = 1/4: 0.868198
    (3, 500, 0.55), (300, 500, 0.55),  # p = 1/2 -> d = 1/2 -> 0.1 + 0.45; the step count plays no part
    (3, 1000, 0.1), (3, 5000, 0.1),  # p >= 1: the floor
])
def test_lr_factor_by_tokens_hand_derived(step, tokens, expected):
    cfg = LRScheduleConfig(decay="cosine", min_lr_ratio=0.1, total_tokens=1000)
    assert lr_factor(step, cfg, total_steps=4, tokens=tokens) == pytest.approx(expected, abs=1e-12)


def test_warmup_still_counts_steps_and_linear_decay_by_tokens():
    cfg = LRScheduleConfig(warmup_steps=4, decay="linear", min_lr_ratio=0.0, total_tokens=100)
    assert lr_factor(2, cfg, total_steps=1, tokens=90) == 0.5  # warmup: step / 4, tokens not read
    assert lr_factor(4, cfg, total_steps=1, tokens=30) == pytest.approx(0.7)  # 1 - 30/100
    assert lr_factor(4, cfg, total_steps=1, tokens=100) == 0.0


def test_total_tokens_must_be_positive_and_needs_a_counting_module():
    with pytest.raises(ValueError, match="lr_scheduler.total_tokens"):
        LRScheduleConfig(total_tokens=0)

    class Plain(LightningModule):
        def configure_optimizers(self):
            return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

    module = Plain()
    attach_lr_schedule(module, LRScheduleConfig(decay="cosine", total_tokens=10))
    module.trainer = pl.Trainer(max_steps=1, logger=False)  # total_steps unset: estimated from the trainer
    with pytest.raises(TypeError, match="lr_scheduler.total_tokens: Plain does not count"):
        module.configure_optimizers()


class Record(pl.Callback):
    """The lr each optimizer step is taken with, and the tokens counted before its rollout."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.tokens_before: list[int] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
        self.tokens_before.append(module.trained_tokens)


def grpo() -> GRPO:
    module = GRPO(reward=FunctionReward("tests.modules.rewards.length_reward"), policy=TINY,
                  rollout=rollout_cfg(group_size=2), optimizer=lambda p: torch.optim.AdamW(p, lr=LR))
    attach_lr_schedule(module, LRScheduleConfig(decay="linear", min_lr_ratio=0.0, total_tokens=TOTAL))
    return module


def fit(root: Path, max_steps: int, ckpt_path: str | None = None) -> tuple[GRPO, Record]:
    pl.seed_everything(3)
    module, record = grpo(), Record()
    t = trainer(root, max_steps=max_steps, enable_checkpointing=True,
                callbacks=[PeriodicCheckpoint(every_n_steps=2, keep_last=5, dirpath=str(root / "ckpt")), record])
    t.fit(module, datamodule=datamodule(batch_size=2), ckpt_path=ckpt_path)
    return module, record


def test_lr_follows_the_generated_tokens_and_resumes_with_them(tmp_path):
    straight, record = fit(tmp_path / "a", max_steps=5)
    # every token the engine sampled was for training (no validation here), and each step added some
    assert straight.trained_tokens == straight.engine.generated_tokens
    tokens = [*record.tokens_before, straight.trained_tokens]
    assert tokens[0] == 0 and all(b > a for a, b in zip(tokens, tokens[1:], strict=False))
    # linear to 0 at TOTAL tokens: step k runs at LR * (1 - tokens before its rollout / TOTAL), floored at 0
    assert record.lrs == pytest.approx([LR * max(0.0, 1 - t / TOTAL) for t in record.tokens_before], rel=1e-9)
    assert len(set(record.lrs)) == 5  # tokens, not steps: a step-based linear decay over 5 steps differs
    assert record.lrs != pytest.approx([LR * (1 - k / 5) for k in range(5)], rel=1e-6)

    # the checkpoint carries the count; a resume from step 2 continues the schedule and the weights exactly
    saved = torch.load(tmp_path / "a" / "ckpt" / "step=000002.ckpt", weights_only=False, map_location="cpu")
    assert saved["lightning_trepo"]["trained_tokens"] == record.tokens_before[2]
    resumed, again = fit(tmp_path / "b", max_steps=5, ckpt_path=str(tmp_path / "a" / "ckpt" / "step=000002.ckpt"))
    assert again.tokens_before == record.tokens_before[2:] and again.lrs == pytest.approx(record.lrs[2:], rel=1e-9)
    assert resumed.trained_tokens == straight.trained_tokens
    want, got = policy_params(straight), policy_params(resumed)
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-5)


def test_validation_tokens_do_not_count(tmp_path):
    from lightning_trepo.data import BuiltinTaskSource

    pl.seed_everything(3)
    module, record = grpo(), Record()
    t = trainer(tmp_path, max_steps=3, val_check_interval=1, check_val_every_n_epoch=None, callbacks=[record])
    t.fit(module, datamodule=datamodule(batch_size=2, val_batch_size=4,
                                        val_source=BuiltinTaskSource(task="addition", split="test", size=4)))
    # each validation greedily decodes 4 held-out prompts through the same engine: the engine counts them, the
    # schedule does not; the lr of each step still reads only the training tokens before it
    assert module.engine.generated_tokens > module.trained_tokens > record.tokens_before[-1] > 0
    assert record.lrs == pytest.approx([LR * max(0.0, 1 - t / TOTAL) for t in record.tokens_before], rel=1e-9)
