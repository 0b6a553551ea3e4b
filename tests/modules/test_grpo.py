"""GRPO end to end on the built-in task: training, accumulation invariance, checkpoints, reference model."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_trepo import GRPO, UpdateConfig
from reward_models import FunctionReward, NumericAnswer
from tests.helpers import TINY, datamodule, policy_params, rollout_cfg, trainer


def make_grpo(**update) -> GRPO:
    return GRPO(reward=NumericAnswer(answer_key="answer"), policy=TINY, rollout=rollout_cfg(),
                update=UpdateConfig(**update),
                optimizer=lambda p: torch.optim.SGD(p, lr=0.5))


def test_two_steps_change_the_policy_and_log_metrics(tmp_path):
    pl.seed_everything(0)
    module = make_grpo()
    module.configure_model()
    before = policy_params(module)
    # a reward that always has within-group variance so the gradient is non-zero: prefer long completions
    module.reward = FunctionReward("tests.modules.rewards.length_reward")
    t = trainer(tmp_path)
    t.fit(module, datamodule=datamodule())
    after = policy_params(module)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for key in ("reward/total", "reward/total_std", "reward/zero_std_group_frac", "completion/length_mean",
                "completion/length_max", "completion/truncated_frac", "loss/policy", "entropy", "time/generate",
                "time/score", "perf/tokens_per_s", "clip_frac"):
        assert any(k.startswith(key) for k in t.callback_metrics), key
    # the logged values of the last step, re-derived from its rollout: decode each completion and score it by hand
    rollout, logged = module._rollout, t.callback_metrics
    lengths = rollout.completion_mask.sum(1)
    texts = [module.tokenizer.decode(ids[:n], skip_special_tokens=True)
             for ids, n in zip(rollout.completion_ids.tolist(), lengths.tolist(), strict=True)]
    rewards = torch.tensor([sum(map(ord, c)) / max(len(c), 1) / 100.0 for c in texts])
    torch.testing.assert_close(logged["reward/total"], rewards.mean(), atol=1e-6, rtol=0)
    torch.testing.assert_close(logged["reward/total_std"], rewards.std(correction=0), atol=1e-6, rtol=0)  # population
    assert logged["completion/length_mean"] == lengths.float().mean()
    assert logged["completion/length_max"] == lengths.max()


def test_no_reference_model_unless_kl():
    plain = make_grpo()
    plain.configure_model()
    assert plain.ref_model is None
    with_kl = make_grpo(kl_coef=0.1)
    with_kl.configure_model()
    assert with_kl.ref_model is not None
    # the reference is frozen and not part of the module's parameters (so not in the optimizer or checkpoint)
    n_policy = sum(p.numel() for p in with_kl.policy.parameters())
    assert sum(p.numel() for p in with_kl.parameters()) == n_policy
    assert not any(p.requires_grad for p in with_kl.ref_model.parameters())
    assert all(not k.startswith("_frozen") for k in with_kl.state_dict())


def _one_update(tmp_path, accumulate: int, minibatches: int) -> dict[str, torch.Tensor]:
    pl.seed_everything(7)
    module = GRPO(reward=FunctionReward("tests.modules.rewards.length_reward"), policy=TINY,
                  rollout=rollout_cfg(group_size=4, max_new_tokens=5),
                  update=UpdateConfig(num_minibatches=minibatches, aggregation="seq_mean_token_mean"),
                  optimizer=lambda p: torch.optim.SGD(p, lr=1.0))
    t = trainer(tmp_path, max_steps=1, accumulate_grad_batches=accumulate, gradient_clip_val=0.5)
    t.fit(module, datamodule=datamodule(batch_size=2))
    return policy_params(module)


def test_grad_accumulation_2x1_equals_1x2(tmp_path):
    # One rollout of N = 2 prompts x 4 samples. (a) one minibatch of 8, no accumulation;
    # (b) two minibatches of 4 accumulated into one optimizer step. With seq_mean_token_mean,
    # loss(8) = (loss(4a) + loss(4b)) / 2 and Lightning scales each accumulated loss by 1/2, so the
    # (clipped) gradient and the SGD update are identical.
    fresh = make_grpo()
    fresh.configure_model()
    start = policy_params(fresh)  # the tiny model's init is seeded by its config, so every run starts here
    whole = _one_update(tmp_path / "a", accumulate=1, minibatches=1)
    assert any((whole[k] - start[k]).abs().max() > 1e-4 for k in whole)  # the update is not trivially zero
    split = _one_update(tmp_path / "b", accumulate=2, minibatches=2)
    for k in whole:
        torch.testing.assert_close(split[k], whole[k], atol=2e-6, rtol=1e-5)


def test_checkpoint_written_by_fit_reloads(tmp_path):
    pl.seed_everything(0)
    module = make_grpo()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    t = trainer(tmp_path, enable_checkpointing=True, callbacks=[ckpt])
    t.fit(module, datamodule=datamodule())
    path = tmp_path / "ckpt" / "last.ckpt"
    assert path.exists()
    loaded = GRPO.load_from_checkpoint(path, reward=NumericAnswer(answer_key="answer"))
    trained = policy_params(module)
    for k, v in policy_params(loaded).items():
        assert torch.equal(v, trained[k])
    assert loaded.rollout_cfg.group_size == 4 and loaded.policy_cfg == TINY


def test_unknown_aggregation_is_rejected_at_construction():
    with pytest.raises(ValueError, match="token_mean"):
        make_grpo(aggregation="mean_of_everything")


def _pad(rollout, left: int, right: int):
    """The same rollout with `left` extra prompt pads and `right` extra completion pad columns."""
    import dataclasses

    n = rollout.num_samples
    z = lambda k: torch.zeros(n, k, dtype=torch.long)  # noqa: E731
    return dataclasses.replace(
        rollout,
        prompt_ids=torch.cat([z(left), rollout.prompt_ids], 1),
        prompt_mask=torch.cat([z(left), rollout.prompt_mask], 1),
        completion_ids=torch.cat([rollout.completion_ids, z(right)], 1),
        completion_mask=torch.cat([rollout.completion_mask, z(right)], 1),
        old_logprobs=torch.cat([rollout.old_logprobs, torch.zeros(n, right)], 1),
    )


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"])
def test_prompt_and_completion_padding_do_not_change_the_loss(mode):
    torch.manual_seed(0)
    module = GRPO(reward=FunctionReward("tests.modules.rewards.length_reward"), policy=TINY,
                  rollout=rollout_cfg(group_size=4), update=UpdateConfig(aggregation=mode, behaviour_logprobs="always"))
    module.configure_model()
    tok = module.tokenizer
    prompts = ["1+2=", "30+4="]
    rollout, _ = module.make_rollout({"prompts": prompts, "metadata": [{}, {}],
                                      "prompt_ids": [tok(p, add_special_tokens=False).input_ids for p in prompts]})
    with torch.no_grad():
        module.policy.lm_head.weight.add_(0.05 * torch.randn_like(module.policy.lm_head.weight))  # ratio != 1
    base = module.compute_loss(rollout)
    padded = module.compute_loss(_pad(rollout, left=3, right=5))
    torch.testing.assert_close(padded.loss, base.loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(padded.metrics["entropy"], base.metrics["entropy"], atol=1e-6, rtol=1e-6)


def _fit(tmp_path, max_steps: int, ckpt_path=None, callbacks=()):
    pl.seed_everything(3)
    module = GRPO(reward=FunctionReward("tests.modules.rewards.length_reward"), policy=TINY,
                  rollout=rollout_cfg(group_size=2), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    t = trainer(tmp_path, max_steps=max_steps, enable_checkpointing=bool(callbacks), callbacks=list(callbacks))
    t.fit(module, datamodule=datamodule(batch_size=2), ckpt_path=ckpt_path)
    return policy_params(module)


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    # 4 steps straight vs 2 steps, checkpoint, then resume to 4: same rollouts (data position and sampling
    # RNG restored), same AdamW state, hence the same weights.
    straight = _fit(tmp_path / "a", 4)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "c", save_last=True, every_n_train_steps=2)
    _fit(tmp_path / "b", 2, callbacks=[ckpt])
    resumed = _fit(tmp_path / "b", 4, ckpt_path=str(tmp_path / "c" / "last.ckpt"))
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], atol=1e-6, rtol=1e-5)


def test_entropy_is_computed_only_on_logged_steps(tmp_path):
    # log_every_n_steps=2 over 4 optimizer steps: global steps 0 and 2 are logged, so entropy is computed twice
    pl.seed_everything(0)
    module = make_grpo()
    asked = []
    original = module.policy_logprobs
    module.policy_logprobs = lambda batch, with_entropy=False: (asked.append(with_entropy),
                                                                original(batch, with_entropy))[1]
    t = trainer(tmp_path, max_steps=4, log_every_n_steps=2)
    t.fit(module, datamodule=datamodule())
    assert asked == [True, False, True, False]
    assert "entropy" in t.callback_metrics


class _GradientsAtBatchStart(pl.Callback):
    """Whether any policy gradient is held when each training batch starts (before its rollout and forward)."""

    def __init__(self) -> None:
        self.held: list[bool] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.held.append(any(p.grad is not None for p in module.policy.parameters()))


@pytest.mark.parametrize("accumulate", [1, 2])
def test_spent_gradients_are_freed_right_after_the_optimizer_step(tmp_path, accumulate):
    pl.seed_everything(0)
    module = GRPO(reward=FunctionReward("tests.modules.rewards.length_reward"), policy=TINY, rollout=rollout_cfg(),
                  optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    probe = _GradientsAtBatchStart()
    t = trainer(tmp_path, max_steps=2, accumulate_grad_batches=accumulate, callbacks=[probe])
    t.fit(module, datamodule=datamodule())
    # no step has run before batch 0; with accumulation over 2 batches, batch 1 and 3 start mid-accumulation and
    # must still hold batch 0's and 2's gradients; every batch after an optimizer step starts with none
    assert probe.held == ([False, False] if accumulate == 1 else [False, True, False, True])
