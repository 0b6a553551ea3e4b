"""The shipped configs of the field's estimators (DAPO, Dr. GRPO, GSPO, CISPO, SAPO, REINFORCE++(-baseline), adaptive
KL) each train two steps through the console script, and their keys reach the module."""
from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

from lightning_trepo import GRPO, PPO, REINFORCE, UpdateConfig
from lightning_trepo.cli.main import main
from reward_models import FunctionReward
from tests.cli.test_main import cli
from tests.helpers import TINY, datamodule, rollout_cfg, trainer

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {  # config -> (class, what must reach the module)
    "dapo": ("GRPO", {"rollout.dynamic_sampling": True, "update.mask_truncated": True, "update.dual_clip": 3.0}),
    "dr_grpo": ("GRPO", {"advantage_scale": "none", "update.aggregation": "seq_mean_token_sum_norm"}),
    "gspo": ("GRPO", {"update.policy_loss": "gspo", "update.clip_low": 0.0003}),
    "cispo": ("GRPO", {"update.policy_loss": "cispo"}),
    "sapo": ("GRPO", {"update.policy_loss": "sapo", "update.sapo_tau_neg": 1.05}),
    "reinforce_pp": ("REINFORCE", {"estimator": "reinforce_plus_plus", "update.kl_estimator": "k3+"}),
    "reinforce_pp_baseline": ("REINFORCE", {"estimator": "reinforce_plus_plus_baseline",
                                            "update.kl_estimator": "low_var_kl"}),
}
SMALL = ["--trainer.max_steps", "2", "--model.init_args.rollout.group_size", "2", "--data.batch_size", "2",
         "--trainer.logger", "false"]


def _setting(module, dotted: str):
    section, _, key = dotted.rpartition(".")
    owner = {"": module, "rollout": module.rollout_cfg, "update": module.update_cfg}[section]
    return getattr(owner, key)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_keys_reach_the_module(name):
    cls_name, expected = CONFIGS[name]
    model = cli(["--config", str(ROOT / "configs" / f"{name}.yaml")]).model
    assert type(model).__name__ == cls_name
    for key, value in expected.items():
        assert _setting(model, key) == value, key


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_trains_two_steps_through_console_script(name, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    main(["fit", "--config", str(ROOT / "configs" / f"{name}.yaml"), *SMALL])
    assert "step     2 | reward/total=" in caplog.text


def test_adaptive_kl_overlay_trains_two_steps_on_any_algorithm(tmp_path, monkeypatch, caplog):
    overlay = ROOT / "configs" / "adaptive_kl.yaml"
    assert set(yaml.safe_load(overlay.read_text())["model"]) == {"init_args"}  # no class_path: stacks on any config
    model = cli(["--config", str(ROOT / "configs" / "ppo.yaml"), "--config", str(overlay)]).model
    assert isinstance(model, PPO) and model.update_cfg.kl_target == 0.1 and model.kl_coef == 0.05
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    main(["fit", "--config", str(ROOT / "configs" / "grpo.yaml"), "--config", str(overlay), *SMALL])
    assert "step     2 | reward/total=" in caplog.text


def test_adaptive_kl_coefficient_follows_the_controller_and_is_checkpointed(tmp_path):
    # β0 = 0.1, target 1.0, horizon 10, N = 2 prompts x 2 samples = 4 per rollout. The tiny policy stays far below
    # KL 0.8 from its reference, so each rollout's error clips at -0.2: β = 0.1·(1 - 0.2·4/10)² = 0.1·0.92²
    pl.seed_everything(0)
    module = GRPO(reward=FunctionReward("tests.modules.rewards.length_reward"), policy=TINY,
                  rollout=rollout_cfg(group_size=2),
                  update=UpdateConfig(kl_coef=0.1, kl_target=1.0, kl_horizon=10, kl_estimator="k3+"),
                  optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    t = trainer(tmp_path)
    t.fit(module, datamodule=datamodule(batch_size=2))
    assert 0.0 <= float(t.callback_metrics["kl/rollout"]) < 0.8
    assert float(t.callback_metrics["kl/coef"]) == pytest.approx(0.1 * 0.92, abs=1e-7)  # β of rollout 2 (logged fp32)
    assert module.kl_coef == pytest.approx(0.1 * 0.92**2, abs=1e-12)
    assert module.state_dict()["kl_coef_value"].item() == pytest.approx(0.1 * 0.92**2, abs=1e-12)


def test_reinforce_pp_advantages_are_whitened_per_token(tmp_path):
    # REINFORCE++: the rollout's (N, L) advantages have mean 0 and sample variance ~1 over the real tokens
    pl.seed_everything(0)
    module = REINFORCE(reward=FunctionReward("tests.modules.rewards.length_reward"), policy=TINY,
                       rollout=rollout_cfg(group_size=2), estimator="reinforce_plus_plus",
                       optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    trainer(tmp_path, max_steps=1).fit(module, datamodule=datamodule(batch_size=2))
    adv, mask = module._rollout.advantages, module._rollout.completion_mask.bool()
    assert adv.shape == mask.shape and bool((adv[~mask] == 0).all())
    assert abs(float(adv[mask].mean())) < 1e-6 and float(adv[mask].var()) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="baseline"):
        REINFORCE(reward=FunctionReward("tests.modules.rewards.length_reward"), policy=TINY,
                  estimator="reinforce_plus_plus", baseline="running_mean")


def _loss(update: UpdateConfig, logprobs: torch.Tensor, max_new_tokens: int = 6) -> torch.Tensor:
    """The module's policy loss on a hand-made rollout: rows of 2 and 3 tokens (the second truncated), A = [1, -1],
    on-policy (ratio 1)."""
    from tests.helpers import tiny_rollout

    module = GRPO(reward=FunctionReward("tests.modules.rewards.length_reward"), policy=TINY,
                  rollout=rollout_cfg(group_size=2, max_new_tokens=max_new_tokens), update=update)
    batch = tiny_rollout([[1, 1, 0], [1, 1, 1]], group_size=2)
    assert batch.truncated.tolist() == [False, True]
    batch.old_logprobs, batch.advantages = logprobs.detach().clone(), torch.tensor([1.0, -1.0])
    return module.policy_loss(batch, logprobs, None).loss


def test_dr_grpo_normaliser_is_constant_and_overlong_filtering_drops_truncated_rows():
    # on-policy PPO: per-token loss -A = [-1, -1, pad | 1, 1, 1]. seq_mean_token_sum_norm divides by N·L with
    # L = rollout.sampling.max_new_tokens = 6 (not the padded width 3): (-2 + 3) / 12;
    # with update.mask_truncated the truncated row leaves the loss but still counts in N: -2 / 12;
    # update.loss_norm_length = 4 replaces L: -2 / 8
    lp = torch.tensor([[-1.0, -2.0, float("nan")], [-0.5, -0.5, -0.5]], requires_grad=True)
    agg = "seq_mean_token_sum_norm"
    assert _loss(UpdateConfig(aggregation=agg), lp).item() == pytest.approx(1 / 12, abs=1e-7)
    loss = _loss(UpdateConfig(aggregation=agg, mask_truncated=True), lp)
    assert loss.item() == pytest.approx(-2 / 12, abs=1e-7)
    loss.backward()
    # ∂/∂log π = -A / (N·L) on the kept row's real tokens, exactly 0 on the truncated row and the NaN padding
    assert torch.equal(lp.grad, torch.tensor([[-1 / 12, -1 / 12, 0.0], [0.0, 0.0, 0.0]]))
    assert _loss(UpdateConfig(aggregation=agg, mask_truncated=True, loss_norm_length=4), lp).item() == \
        pytest.approx(-2 / 8, abs=1e-7)
    # the same rollout, 12 tokens of budget: the loss halves (the normaliser follows the budget, not the batch)
    assert _loss(UpdateConfig(aggregation=agg), lp, max_new_tokens=12).item() == pytest.approx(1 / 24, abs=1e-7)


def test_policy_loss_key_selects_the_surrogate():
    from lightning_trepo.algorithms.losses import surrogate_loss
    from tests.helpers import tiny_rollout

    lp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]])
    old = lp + torch.tensor([[0.3, -0.4, 0.0], [0.1, 0.9, -0.2]])
    batch = tiny_rollout([[1, 1, 0], [1, 1, 1]], group_size=2)
    batch.old_logprobs, batch.advantages = old, torch.tensor([1.0, -1.0])
    module = GRPO(reward=FunctionReward("tests.modules.rewards.length_reward"), policy=TINY,
                  rollout=rollout_cfg(group_size=2))
    for kind in ("ppo", "gspo", "cispo", "sapo"):
        update = UpdateConfig(policy_loss=kind, dual_clip=3.0 if kind in ("ppo", "gspo") else None)
        module.update_cfg = update
        expected = surrogate_loss(kind, lp, old, batch.advantages, batch.completion_mask, 0.2, 0.2,
                                  update.dual_clip, (1.0, 1.05), "token_mean", 4)
        assert module.policy_loss(batch, lp, None).loss.item() == expected.loss.item()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_estimator_configs_state_only_what_differs_from_base(name):
    # like the algorithm configs: the class, the algorithm's own settings, and the update / rollout keys of the variant
    import inspect

    import lightning_trepo
    from lightning_trepo.modules.base import RLModule

    cfg = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    cls_name = CONFIGS[name][0]
    assert set(cfg) == {"model"} and cfg["model"]["class_path"] == f"lightning_trepo.{cls_name}"
    shared = set(inspect.signature(RLModule.__init__).parameters)
    own = set(inspect.signature(getattr(lightning_trepo, cls_name).__init__).parameters) - shared
    assert set(cfg["model"]["init_args"]) - own <= {"update", "rollout"}
