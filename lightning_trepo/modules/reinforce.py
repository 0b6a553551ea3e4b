"""REINFORCE (Williams 1992) with the response reward as the return, optionally minus a running-mean baseline.

The paper's Trajectory Policy Gradient Theorem (arXiv 2506.02553, Theorem 1) shows that the response
reward RM(W) is an unbiased sample of every token's U(W_{0,t}), so this is already an unbiased
token-level policy gradient. A baseline that does not depend on the current samples keeps it unbiased
and lowers the variance.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_trepo.algorithms.advantages import (
    reinforce_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    token_level_rewards,
)
from lightning_trepo.envs import Environment
from lightning_trepo.errors import check_choice, require
from lightning_trepo.modules.base import OptimizerFactory, RLModule, RolloutConfig, UpdateConfig, default_optimizer
from lightning_trepo.ops import pack_by_mask, unpack_by_mask
from lightning_trepo.policy import PolicyConfig
from lightning_trepo.types import Advantages, Rollout
from reward_models import Reward

Baseline = Literal["none", "running_mean"]
Estimator = Literal["reinforce", "reinforce_plus_plus", "reinforce_plus_plus_baseline"]


class REINFORCE(RLModule):
    """REINFORCE: A_i = r_i − b, the same for every token of response i.

    ``baseline="running_mean"``: b is a bias-corrected exponential moving average of the mean reward of
    the PREVIOUS rollouts, b_k = m·b_{k−1} + (1−m)·mean(r_{k−1}) divided by (1 − m^k), b = 0 before the
    first rollout. It is module state (buffers ``baseline_mean`` / ``baseline_updates``), so it is saved
    in checkpoints and resumed with them.
    """

    def __init__(
        self,
        reward: Reward,
        policy: PolicyConfig = PolicyConfig(),
        rollout: RolloutConfig = RolloutConfig(),
        update: UpdateConfig = UpdateConfig(),
        optimizer: OptimizerFactory = default_optimizer,
        environment: Environment | None = None,
        baseline: Baseline = "none",
        baseline_momentum: float = 0.9,
        estimator: Estimator = "reinforce",
    ) -> None:
        """
        Args:
            baseline: none (A = r) | running_mean (A = r − moving average of past rollouts' mean reward).
            baseline_momentum: m in [0, 1) of the moving average (0 = the previous rollout's mean only).
            estimator: reinforce (A = r − b, unbiased) | reinforce_plus_plus (REINFORCE++, arXiv 2501.03262: the
                per-token return whitened over the batch's tokens) | reinforce_plus_plus_baseline (r minus its group's
                mean, then whitened). verl ``adv_estimator``; both REINFORCE++ forms are biased
                (``lightning-trepo verify-estimators``) and take the KL in the loss (``update.kl_coef``).
        """
        check_choice("baseline", baseline, Baseline)
        check_choice("estimator", estimator, Estimator)
        require(0.0 <= baseline_momentum < 1.0, "baseline_momentum", baseline_momentum, "a number in [0, 1)")
        require(estimator == "reinforce" or baseline == "none", "baseline", baseline, "none with estimator "
                f"{estimator}", "REINFORCE++ whitens over the batch, which removes any constant baseline")
        super().__init__(reward=reward, policy=policy, rollout=rollout, update=update, optimizer=optimizer,
                         environment=environment)
        self.baseline_kind = baseline
        self.baseline_momentum = baseline_momentum
        self.estimator = estimator
        if baseline == "running_mean":
            self.register_buffer("baseline_mean", torch.zeros(()))
            self.register_buffer("baseline_updates", torch.zeros((), dtype=torch.long))

    def running_baseline(self) -> Tensor:
        """b from the rollouts seen so far (0 before the first one), bias-corrected like Adam's moments."""
        if self.baseline_kind != "running_mean" or int(self.baseline_updates) == 0:
            return torch.zeros((), device=self.device)
        return self.baseline_mean / (1.0 - self.baseline_momentum ** int(self.baseline_updates))

    @torch.no_grad()
    def update_running_baseline(self, rewards: Tensor) -> None:
        """Fold this rollout's mean reward (averaged over ranks) into the moving average."""
        batch_mean = rewards.float().mean()
        if self._trainer is not None and self.trainer.world_size > 1:
            batch_mean = self.trainer.strategy.reduce(batch_mean, reduce_op="mean")
        m = self.baseline_momentum
        self.baseline_mean.mul_(m).add_((1.0 - m) * batch_mean.to(self.baseline_mean))
        self.baseline_updates.add_(1)

    def compute_advantages(self, rollout: Rollout, rewards: Tensor) -> Advantages:
        # token-level estimators run on the model's tokens packed together (an episode's environment tokens out)
        trained = rollout.trained_mask
        mask = pack_by_mask(trained, trained)[1]
        if self.estimator == "reinforce_plus_plus":
            adv = reinforce_pp_advantages(token_level_rewards(rewards.float(), mask), mask)
            return Advantages(unpack_by_mask(adv, trained))
        if self.estimator == "reinforce_plus_plus_baseline":
            adv = reinforce_pp_baseline_advantages(rewards.float(), mask, rollout.group_size)
            return Advantages(unpack_by_mask(adv, trained))
        advantages = reinforce_advantages(rewards)
        if self.baseline_kind != "running_mean":
            return Advantages(advantages)
        b = self.running_baseline()  # from past rollouts only: independent of these samples, so unbiased
        self.update_running_baseline(rewards)
        return Advantages(advantages - b.to(advantages), {"reward/baseline": b.detach().float().cpu()})
