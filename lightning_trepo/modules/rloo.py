"""RLOO (Ahmadian et al. 2024, arXiv 2402.14740): REINFORCE with a leave-one-out group baseline."""
from __future__ import annotations

from torch import Tensor

from lightning_trepo.algorithms.advantages import rloo_advantages
from lightning_trepo.algorithms.kl import kl_estimate, kl_penalized_rewards
from lightning_trepo.envs import Environment
from lightning_trepo.errors import require
from lightning_trepo.modules.base import OptimizerFactory, RLModule, RolloutConfig, UpdateConfig, default_optimizer
from lightning_trepo.policy import PolicyConfig
from lightning_trepo.types import Advantages, Rollout
from reward_models import Reward


class RLOO(RLModule):
    """REINFORCE Leave-One-Out.

    Advantage of sample i in its group of G: r_i − 1/(G−1) Σ_{j≠i} r_j, the same for every token. The
    baseline excludes r_i, so the gradient stays unbiased (unlike GRPO's mean-including-self).

    KL to the reference (weight ``update.kl_coef``, estimator ``update.kl_estimator``) goes either
    into the reward (``kl_in_reward=True``, as in the RLOO paper and TRL): r_i ← r_i − β Σ_t kl_t with
    the behaviour policy's log-probs, BEFORE the leave-one-out baseline; or into the loss as in GRPO.
    """

    def __init__(
        self,
        reward: Reward,
        policy: PolicyConfig = PolicyConfig(),
        rollout: RolloutConfig = RolloutConfig(),
        update: UpdateConfig = UpdateConfig(),
        optimizer: OptimizerFactory = default_optimizer,
        environment: Environment | None = None,
        kl_in_reward: bool = True,
    ) -> None:
        """
        Args:
            kl_in_reward: subtract β·(per-sequence KL sum) from each reward (True) or add β·KL to the loss (False).
        """
        require(rollout.group_size >= 2, "rollout.group_size", rollout.group_size, "an integer >= 2",
                "RLOO's leave-one-out baseline needs another sample of the same prompt")
        super().__init__(reward=reward, policy=policy, rollout=rollout, update=update, optimizer=optimizer,
                         environment=environment)
        self.kl_in_reward = kl_in_reward

    def kl_in_loss(self) -> bool:
        return not self.kl_in_reward

    def behaviour_pass_needed(self) -> bool:
        """KL in the reward reads π_old before any loss pass runs."""
        return super().behaviour_pass_needed() or (self.kl_in_reward and self.update_cfg.kl_coef != 0.0)

    def compute_advantages(self, rollout: Rollout, rewards: Tensor) -> Advantages:
        update, metrics = self.update_cfg, {}
        if self.kl_in_reward and self.kl_coef != 0.0 and rollout.ref_logprobs is not None:
            mask = rollout.trained_mask
            kl = kl_estimate(rollout.old_logprobs, rollout.ref_logprobs, update.kl_estimator)
            rewards = kl_penalized_rewards(rewards, kl, mask, self.kl_coef)
            kl_sum = (kl * mask).sum(-1)
            metrics = {"kl/sequence": kl_sum.mean().detach().cpu(),
                       "reward/kl_penalized": rewards.mean().detach().cpu()}
        return Advantages(rloo_advantages(rewards, rollout.group_size), metrics)
