"""PPO: GAE wiring, one forward for LM and value heads, the critic trained by the same optimizer."""
from __future__ import annotations

import pytest
import torch

from lightning_trepo import PPO, UpdateConfig
from lightning_trepo.ops import masked_mean, masked_var
from reward_models import FunctionReward, NumericAnswer
from tests.helpers import TINY, datamodule, policy_params, rollout_cfg, tiny_rollout, trainer


def make(update: UpdateConfig | None = None, optimizer=None, **kw) -> PPO:
    extra = {} if optimizer is None else {"optimizer": optimizer}
    return PPO(reward=NumericAnswer(answer_key="answer"), policy=TINY, rollout=rollout_cfg(group_size=2),
               update=update or UpdateConfig(), **extra, **kw)


def gae_rollout():
    rollout = tiny_rollout([[1, 1, 1], [1, 1, 0]], group_size=2)
    rollout.old_logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.0, 4.0]])  # k1 per token; 4.0 is padding
    rollout.ref_logprobs = rollout.old_logprobs - kl
    rollout.values = torch.tensor([[0.5, 0.2, -0.1], [0.3, 0.4, 7.0]])  # 7.0 is padding: ignored
    return rollout


def test_gae_wiring_hand_checked():
    module = make(UpdateConfig(kl_coef=0.1, kl_estimator="k1"), lam=0.5, whiten_advantages=False)
    rollout = gae_rollout()
    out = module.compute_advantages(rollout, torch.tensor([1.0, 2.0]))
    adv, metrics = out.advantages, out.metrics
    assert rollout.token_rewards is None and rollout.returns is None  # the hook returns them, it writes nothing
    # token rewards r_t = -0.1*kl_t, plus RM on the last real token
    #   seq 0: [-0.01, -0.02, -0.03 + 1] ; seq 1 (T = 2): [-0.05, -0.0 + 2, 0]
    torch.testing.assert_close(out.token_rewards, torch.tensor([[-0.01, -0.02, 0.97], [-0.05, 2.0, 0.0]]))
    # GAE, gamma = 1, lam = 0.5, V = 0 after the last real token:
    #   seq 0: d2 = 0.97 - (-0.1) = 1.07           A2 = 1.07
    #          d1 = -0.02 + (-0.1) - 0.2 = -0.32   A1 = -0.32 + 0.5*1.07 = 0.215
    #          d0 = -0.01 + 0.2 - 0.5 = -0.31      A0 = -0.31 + 0.5*0.215 = -0.2025
    #   seq 1: d1 = 2.0 - 0.4 = 1.6                A1 = 1.6
    #          d0 = -0.05 + 0.4 - 0.3 = 0.05       A0 = 0.05 + 0.5*1.6 = 0.85
    expected = torch.tensor([[-0.2025, 0.215, 1.07], [0.85, 1.6, 0.0]])
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)
    # returns R = A + V on real tokens, 0 on padding
    returns = torch.tensor([[0.2975, 0.415, 0.97], [1.15, 2.0, 0.0]])
    torch.testing.assert_close(out.returns, returns, rtol=0, atol=1e-6)
    assert metrics["kl/token_mean"].item() == pytest.approx(0.22)  # (0.1+0.2+0.3+0.5+0)/5


def test_whitened_advantages_have_zero_mean_unit_variance_on_real_tokens():
    module = make(UpdateConfig(kl_coef=0.1, kl_estimator="k1"), lam=0.5)
    rollout = gae_rollout()
    adv = module.compute_advantages(rollout, torch.tensor([1.0, 2.0])).advantages
    mask = rollout.completion_mask
    # the SAMPLE variance (divisor n - 1, as verl's masked_whiten and TRL's whiten) is 1 over the 5 real tokens,
    # so the population variance is 4/5
    assert masked_mean(adv, mask).abs() < 1e-6 and masked_var(adv, mask, unbiased=True).item() == pytest.approx(1.0,
                                                                                                           abs=1e-5)
    assert masked_var(adv, mask).item() == pytest.approx(0.8, abs=1e-5)
    assert adv[1, 2] == 0


def test_one_policy_forward_feeds_lm_and_value_heads():
    module = make()
    module.configure_model()
    seen = []
    module.policy.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    rollout = tiny_rollout([[1, 1, 1], [1, 1, 0]], group_size=2)
    logprobs, _, values = module.logprobs_and_values(rollout)
    # every position runs once for both heads: the group's shared prompt minus its last token (1 x 2), then each
    # row's last prompt token and completion (2 x 4) on its cache (update.shared_prompt_pass)
    assert seen == [(1, 2), (2, 4)] and values.shape == logprobs.shape == (2, 3) and values[1, 2] == 0
    # the value head reads the hidden state that predicts each completion token (the LM head's input)
    module.value_head.weight.data.normal_()
    _, _, values = module.logprobs_and_values(rollout)
    inputs = torch.cat([rollout.prompt_ids, rollout.completion_ids], 1)
    hidden = module.policy(input_ids=inputs, output_hidden_states=True).hidden_states[-1][:, 2:5]
    torch.testing.assert_close(values[0], module.value_head(hidden[0]).squeeze(-1))


@pytest.mark.parametrize("value_model", ["head", "separate"])
def test_value_params_in_optimizer_and_value_loss_decreases_on_a_fixed_rollout(value_model):
    # policy lr 0, value lr 5e-3: only the critic moves, so the value loss must fall (regression on fixed returns)
    module = make(UpdateConfig(kl_coef=0.0), optimizer=lambda groups: torch.optim.Adam(groups, lr=0.0),
                  value_model=value_model, value_lr=5e-3, value_clip=None)
    module.configure_model()
    assert module.ref_model is None
    opt = module.configure_optimizers()
    critic_ids = {id(p) for p in module.critic_parameters()}
    assert {id(p) for p in opt.param_groups[1]["params"]} == critic_ids and opt.param_groups[1]["lr"] == 5e-3
    in_opt = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(in_opt) == sorted(id(p) for p in module.parameters()) and len(set(in_opt)) == len(in_opt)
    if value_model == "separate":  # a separate trunk: its own weights, none shared with the policy
        assert not critic_ids & {id(p) for p in module.policy.parameters()} and len(critic_ids) > 2
    rollout = tiny_rollout([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]], group_size=2)
    rollout.old_logprobs, rollout.values = module.behaviour_logprobs(rollout)
    assert torch.equal(rollout.values, torch.zeros(4, 4))  # zero-initialised head
    out = module.compute_advantages(rollout, torch.tensor([1.0, -1.0, 0.5, 2.0]))
    out.write_into(rollout)
    metrics = out.metrics
    assert "value/explained_variance" in metrics
    before = policy_params(module)
    losses = []
    for _ in range(8):
        out = module.compute_loss(rollout)
        losses.append(out.metrics["loss/value"].item())
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert losses[-1] < 0.6 * losses[0] and all(b < a for a, b in zip(losses[:5], losses[1:5], strict=False)), losses
    assert "value/explained_variance_update" in out.metrics
    assert all(torch.equal(v, policy_params(module)[k]) for k, v in before.items())
    fresh = make(value_model=value_model)
    fresh.configure_model()
    fresh.load_state_dict(module.state_dict())  # the critic is module state: checkpointed and restored
    torch.testing.assert_close(fresh.value_head.weight, module.value_head.weight)


def test_trains_with_kl_in_reward_and_logs_explained_variance(tmp_path):
    torch.manual_seed(0)
    module = PPO(reward=FunctionReward("tests.modules.rewards.length_reward"), policy=TINY,
                 rollout=rollout_cfg(group_size=2), update=UpdateConfig(kl_coef=0.1, epochs=2),
                 optimizer=lambda g: torch.optim.AdamW(g, lr=1e-3), value_lr=1e-2)
    t = trainer(tmp_path, max_steps=2)
    t.fit(module, datamodule=datamodule())
    assert module.ref_model is not None and module.rollout_plan().need_ref_logprobs
    assert all(not k.startswith("_frozen") for k in module.state_dict())
    for key in ("value/explained_variance", "value/explained_variance_update", "loss/value", "loss/surrogate",
                "kl/token_mean", "value/clip_frac", "clip_frac", "entropy"):
        assert key in t.callback_metrics, key
    assert "kl" not in t.callback_metrics  # the KL is in the reward, not the loss
    assert t.optimizers[0].param_groups[1]["lr"] == 1e-2
    assert module.value_head.weight.abs().sum() > 0  # the critic was trained


@pytest.mark.parametrize("value_model", ["head", "separate"])
def test_bucketed_logprobs_and_values_equal_one_padded_pass(value_model):
    # group 0 runs 6 tokens, group 1 ends after 1: length buckets run them apart, and the log-probs, entropy, values
    # and every gradient (policy, value head, critic trunk) are those of one forward padded to 6
    rows = [[1] * 6, [1] * 6, [1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]]
    results = []
    for buckets in (1, 3):
        torch.manual_seed(0)
        module = make(UpdateConfig(length_buckets=buckets), value_model=value_model)
        module.configure_model()
        module.value_head.weight.data.normal_()
        shapes = []
        hook = module.policy.get_input_embeddings().register_forward_hook(
            lambda m, i, o, shapes=shapes: shapes.append(tuple(i[0].shape)))
        rollout = tiny_rollout(rows, group_size=2, seed=4)
        logprobs, entropy, values = module.logprobs_and_values(rollout, with_entropy=True)
        hook.remove()
        weights = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(1))
        (logprobs * weights[0] + values * weights[1]).sum().backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        results.append((logprobs.detach(), entropy, values.detach(), grads, shapes))
    (lp1, ent1, v1, g1, one), (lp3, ent3, v3, g3, many) = results
    assert len(many) > len(one) and max(s[1] for s in many[-2:]) < max(s[1] for s in one)  # a short bucket ran
    mask = torch.tensor(rows, dtype=torch.bool)
    assert (lp3[~mask] == 0).all() and (v3[~mask] == 0).all() and lp3.shape == v3.shape == (4, 6)
    torch.testing.assert_close(lp3, lp1, atol=2e-6, rtol=0)
    torch.testing.assert_close(v3, v1, atol=2e-6, rtol=0)
    torch.testing.assert_close(ent3[mask], ent1[mask], atol=2e-6, rtol=1e-6)
    assert g1.keys() == g3.keys() and any("value_head" in n for n in g1)
    assert value_model == "head" or any(n.startswith("critic") for n in g1)
    for name, grad in g1.items():
        # fp32 sums in a different order: the error is relative to the largest entry (grads here reach 400)
        torch.testing.assert_close(g3[name], grad, atol=2e-6 * grad.abs().max().item(), rtol=0, msg=name)
