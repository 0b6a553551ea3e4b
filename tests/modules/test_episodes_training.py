"""Every algorithm trains on multi-turn episodes; the environment's tokens never reach the loss."""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from lightning_trepo import GRPO, PPO, REINFORCE, RLOO, ReMax, RolloutConfig, SamplingConfig, UpdateConfig
from lightning_trepo.rollout.episodes import EpisodeConfig
from reward_models import FunctionReward
from tests.envs.scripted import Scripted
from tests.helpers import TINY, datamodule, policy_params, trainer


def episode_cfg(group_size: int = 2) -> RolloutConfig:
    return RolloutConfig(group_size=group_size, sampling=SamplingConfig(max_new_tokens=4),
                         episode=EpisodeConfig(max_turns=3, max_total_tokens=24), val_num_samples=0)


def batch(module, prompts=("12+3=", "4+5=")) -> dict:
    ids = [module.tokenizer(p)["input_ids"] for p in prompts]
    return {"prompts": list(prompts), "prompt_ids": ids, "metadata": [{"answer": "1"} for _ in prompts]}


@pytest.mark.parametrize("kl_coef", [0.0, 0.1])
def test_env_token_logprobs_never_enter_the_loss(kl_coef):
    # the loss's gradient w.r.t. each token log-prob is 0 on every environment token and non-zero on model tokens
    # (advantages are non-zero: rewards differ within each group), with and without the KL term
    pl.seed_everything(0)
    module = GRPO(reward=FunctionReward("tests.modules.rewards.length_reward"), policy=TINY, rollout=episode_cfg(),
                  update=UpdateConfig(kl_coef=kl_coef), environment=Scripted(turns=2))
    module.configure_model()
    rollout, _ = module.make_rollout(batch(module))
    assert rollout.loss_mask is not None
    env = rollout.completion_mask.bool() & ~rollout.loss_mask.bool()
    assert env.sum() > 0 and rollout.loss_mask.sum() > 0
    logprobs, _ = module.policy_logprobs(rollout)
    logprobs.retain_grad()
    module.policy_loss(rollout, logprobs, None).loss.backward()
    assert torch.all(logprobs.grad[env] == 0)
    assert torch.all(logprobs.grad[rollout.loss_mask.bool()] != 0)
    # and the loss does not change when the env tokens' log-probs are replaced by garbage (NaN included)
    garbage = torch.where(env, torch.full_like(logprobs, float("nan")), logprobs.detach())
    torch.testing.assert_close(module.policy_loss(rollout, garbage, None).loss,
                               module.policy_loss(rollout, logprobs.detach(), None).loss, rtol=0, atol=0)


def test_loss_norm_length_of_an_episode_is_its_most_trained_tokens():
    # Dr. GRPO's constant L: 3 turns x 4 new tokens = 12 model tokens at most (the 24 total also hold env tokens);
    # with max_total_tokens 10 the episode is cut first; an explicit update.loss_norm_length still wins
    reward = FunctionReward("tests.modules.rewards.length_reward")
    assert GRPO(reward=reward, policy=TINY, rollout=episode_cfg(), environment=Scripted(turns=2)).loss_norm_length == 12
    cut = RolloutConfig(group_size=2, sampling=SamplingConfig(max_new_tokens=4),
                        episode=EpisodeConfig(max_turns=3, max_total_tokens=10), val_num_samples=0)
    assert GRPO(reward=reward, policy=TINY, rollout=cut, environment=Scripted(turns=2)).loss_norm_length == 10
    assert GRPO(reward=reward, policy=TINY, rollout=episode_cfg(), update=UpdateConfig(loss_norm_length=7),
                environment=Scripted(turns=2)).loss_norm_length == 7
    assert GRPO(reward=reward, policy=TINY, rollout=episode_cfg()).loss_norm_length == 4  # no env: the budget


@pytest.mark.parametrize("cls", [GRPO, RLOO, REINFORCE, ReMax, PPO])
def test_every_algorithm_trains_on_episodes(tmp_path, cls):
    pl.seed_everything(0)
    module = cls(reward=FunctionReward("tests.modules.rewards.length_reward"), policy=TINY, rollout=episode_cfg(),
                 environment=Scripted(turns=2), optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    module.configure_model()
    before = policy_params(module)
    t = trainer(tmp_path)
    t.fit(module, datamodule=datamodule())
    after = policy_params(module)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    rollout, logged = module._rollout, t.callback_metrics
    assert rollout.loss_mask is not None and all(m["episode_turns"] >= 1 for m in rollout.metadata)
    # generated-token counts cover the model's tokens only; the env's are logged apart
    assert logged["completion/tokens"] == rollout.loss_mask.sum()
    env_tokens = (rollout.completion_mask.bool() & ~rollout.loss_mask.bool()).sum()
    assert env_tokens > 0 and logged["episode/env_tokens"] == env_tokens
    if cls is ReMax:
        assert rollout.greedy is not None and rollout.greedy.loss_mask is not None
    if cls is PPO:  # advantages and value targets live on model tokens only
        off = ~rollout.loss_mask.bool()
        assert torch.all(rollout.advantages[off] == 0) and torch.all(rollout.returns[off] == 0)


def test_ppo_gae_bootstraps_across_environment_tokens():
    # model tokens at 0, 1 and 4 (env tokens 2, 3): with γ = λ = 1 and reward 1 on the last model token, GAE over
    # the model tokens alone gives A_t = 1 - V_t at each of them (V after the last = 0), and returns R_t = 1
    from lightning_trepo.modules.ppo import model_token_gae

    mask = torch.tensor([[1, 1, 0, 0, 1, 0]])
    values = torch.tensor([[0.2, 0.5, 9.0, 9.0, 0.7, 9.0]])
    token_rewards, adv, ret = model_token_gae(torch.tensor([1.0]), values, mask, None, 0.0, 1.0, 1.0)
    assert token_rewards.tolist() == [[0, 0, 0, 0, 1, 0]]
    torch.testing.assert_close(adv, torch.tensor([[0.8, 0.5, 0, 0, 0.3, 0]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 0, 0, 1.0, 0]]))


def test_dynamic_sampling_keeps_the_loss_mask(tmp_path):
    # refilled batches are concatenated: the merged rollout must keep each episode's loss mask, padded like its ids
    pl.seed_everything(0)
    cfg = episode_cfg()
    cfg.dynamic_sampling, cfg.max_extra_rounds = True, 2
    module = GRPO(reward=FunctionReward("tests.modules.rewards.first_char_odd"), policy=TINY, rollout=cfg,
                  environment=Scripted(turns=2), optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    trainer(tmp_path, max_steps=2).fit(module, datamodule=datamodule())
    rollout = module._rollout
    assert rollout.loss_mask is not None and rollout.loss_mask.shape == rollout.completion_mask.shape
    assert (rollout.completion_mask.bool() & ~rollout.loss_mask.bool()).any()  # env tokens stay out of the loss
    assert not (rollout.loss_mask.bool() & ~rollout.completion_mask.bool()).any()


def test_concat_rollouts_pads_and_keeps_loss_masks():
    # two parts of widths 3 and 2: the narrower one is right padded with 0 in both masks
    from lightning_trepo.rollout.dynamic_sampling import concat_rollouts
    from tests.helpers import tiny_rollout

    a, b = tiny_rollout([[1, 1, 1], [1, 1, 0]], 2), tiny_rollout([[1, 1], [1, 0]], 2)
    a.loss_mask, b.loss_mask = torch.tensor([[1, 0, 1], [1, 0, 0]]), torch.tensor([[0, 1], [1, 0]])
    merged = concat_rollouts([a, b], pad_id=0)
    assert merged.loss_mask.tolist() == [[1, 0, 1], [1, 0, 0], [0, 1, 0], [1, 0, 0]]
