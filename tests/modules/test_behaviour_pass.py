"""The π_old log-prob pass is skipped when the update is on-policy, and nothing learned changes.

With one epoch and one minibatch the loss pass runs on the very weights that sampled the rollout, so
π_old(w_t) = π_θ(w_t) and the ratio is exactly 1: using the loss pass's own detached log-probs as π_old
gives the same loss and the same gradient as a separate behaviour pass (TRL skips it the same way).
"""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from lightning_trepo import GRPO, PPO, REINFORCE, RLOO, TRePO, UpdateConfig
from reward_models import FunctionReward
from tests.helpers import TINY, datamodule, policy_params, rollout_cfg, trainer

PROMPTS = ["1+2=", "30+4=", "7+7="]
CLASSES = {"grpo": GRPO, "reinforce": REINFORCE, "rloo": RLOO, "trepo": TRePO}


def _module(name: str, **update):
    extra = {"num_anchors": 1, "num_continuations": 2} if name == "trepo" else {}
    extra.update({"kl_in_reward": False} if name == "rloo" else {})
    return CLASSES[name](reward=FunctionReward("tests.modules.rewards.length_reward"), policy=TINY,
                         rollout=rollout_cfg(group_size=4, max_new_tokens=5), update=UpdateConfig(**update),
                         optimizer=lambda p: torch.optim.SGD(p, lr=0.5), **extra)


def _rollout_loss_grads(name: str, behaviour: str):
    torch.manual_seed(0)
    module = _module(name, behaviour_logprobs=behaviour, kl_coef=0.05)
    module.configure_model()
    tok = module.tokenizer
    batch = {"prompts": PROMPTS, "metadata": [{} for _ in PROMPTS],
             "prompt_ids": [tok(p, add_special_tokens=False).input_ids for p in PROMPTS]}
    rollout, _ = module.make_rollout(batch)
    out = module.compute_loss(rollout)
    out.loss.backward()
    grads = {k: p.grad.clone() for k, p in module.policy.named_parameters() if p.grad is not None}
    return rollout, out, grads


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_skipped_behaviour_pass_gives_the_same_loss_and_gradient(name):
    skipped, out_skip, g_skip = _rollout_loss_grads(name, "auto")
    computed, out_full, g_full = _rollout_loss_grads(name, "always")
    assert skipped.old_logprobs is None and computed.old_logprobs is not None
    assert torch.equal(skipped.completion_ids, computed.completion_ids)  # the same samples: only the pass differs
    torch.testing.assert_close(out_skip.loss, out_full.loss, atol=1e-6, rtol=1e-6)
    assert set(g_skip) == set(g_full) and g_skip
    assert any(g.abs().max() > 1e-4 for g in g_full.values())  # a real gradient, not two zeros
    for k in g_full:
        torch.testing.assert_close(g_skip[k], g_full[k], atol=1e-6, rtol=1e-5)
    assert float(out_skip.metrics["clip_frac"]) == 0.0  # ratio exactly 1


@pytest.mark.parametrize("update", [{"epochs": 2}, {"num_minibatches": 2}])
def test_the_pass_runs_whenever_the_weights_move_within_a_rollout(update):
    module = _module("grpo", **update)
    assert module.behaviour_pass_needed()
    module.configure_model()
    tok = module.tokenizer
    batch = {"prompts": PROMPTS[:2], "metadata": [{}, {}],
             "prompt_ids": [tok(p, add_special_tokens=False).input_ids for p in PROMPTS[:2]]}
    rollout, _ = module.make_rollout(batch)
    assert rollout.old_logprobs is not None and rollout.old_logprobs.shape == rollout.completion_ids.shape


def test_rloo_with_kl_in_the_reward_and_ppo_keep_the_pass():
    assert not _module("rloo").behaviour_pass_needed()  # kl_coef 0: nothing reads π_old before the loss
    rloo = RLOO(reward=FunctionReward("tests.modules.rewards.length_reward"), policy=TINY,
                rollout=rollout_cfg(group_size=2), update=UpdateConfig(kl_coef=0.1))
    assert rloo.behaviour_pass_needed()  # r ← r − β Σ kl(π_old, π_ref) before any loss pass
    ppo = PPO(reward=FunctionReward("tests.modules.rewards.length_reward"), policy=TINY, rollout=rollout_cfg())
    ppo.configure_model()
    tok = ppo.tokenizer
    rollout, _ = ppo.make_rollout({"prompts": PROMPTS[:1], "metadata": [{}],
                                   "prompt_ids": [tok(PROMPTS[0], add_special_tokens=False).input_ids]})
    assert rollout.old_logprobs is not None and rollout.values is not None  # GAE needs V_old before the loss


def _train(tmp_path, behaviour: str) -> dict[str, torch.Tensor]:
    pl.seed_everything(5)
    module = _module("grpo", behaviour_logprobs=behaviour, kl_coef=0.05)
    trainer(tmp_path, max_steps=3, gradient_clip_val=1.0).fit(module, datamodule=datamodule(batch_size=2))
    return policy_params(module)


def test_three_training_steps_end_at_the_same_weights(tmp_path):
    skipped, computed = _train(tmp_path / "a", "auto"), _train(tmp_path / "b", "always")
    for k in computed:
        torch.testing.assert_close(skipped[k], computed[k], atol=1e-6, rtol=1e-5)
