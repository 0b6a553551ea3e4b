"""GRPO (Shao et al. 2024, arXiv 2402.03300): group-normalised response rewards, PPO-clipped loss."""
from __future__ import annotations

from torch import Tensor

from lightning_trepo.algorithms.advantages import GRPOScale, grpo_advantages
from lightning_trepo.envs import Environment
from lightning_trepo.errors import check_choice, require
from lightning_trepo.modules.base import OptimizerFactory, RLModule, RolloutConfig, UpdateConfig, default_optimizer
from lightning_trepo.policy import PolicyConfig
from lightning_trepo.types import Advantages, Rollout
from reward_models import Reward

AdvantageScale = GRPOScale


class GRPO(RLModule):
    """Group Relative Policy Optimization.

    Advantage of sample i in its group of G: (r_i − mean_group(r)) / (std + eps), the same for every
    token of the response. The group mean includes r_i itself, which scales the expected gradient
    by (G−1)/G (see ``lightning-trepo verify-estimators``).
    """

    def __init__(
        self,
        reward: Reward,
        policy: PolicyConfig = PolicyConfig(),
        rollout: RolloutConfig = RolloutConfig(),
        update: UpdateConfig = UpdateConfig(),
        optimizer: OptimizerFactory = default_optimizer,
        environment: Environment | None = None,
        advantage_scale: AdvantageScale = "group",
        advantage_eps: float = 1e-6,
    ) -> None:
        """
        Args:
            advantage_scale: std used to scale advantages: group | batch | none (Dr. GRPO).
            advantage_eps: added to the std before dividing.
        """
        check_choice("advantage_scale", advantage_scale, AdvantageScale)
        require(advantage_eps >= 0, "advantage_eps", advantage_eps, "a number >= 0")
        require(rollout.group_size >= 2, "rollout.group_size", rollout.group_size, "an integer >= 2",
                "GRPO's group-relative advantage is 0 for a group of one (use REINFORCE or ReMax for G = 1)")
        super().__init__(reward=reward, policy=policy, rollout=rollout, update=update, optimizer=optimizer,
                         environment=environment)
        self.advantage_scale = advantage_scale
        self.advantage_eps = advantage_eps

    def compute_advantages(self, rollout: Rollout, rewards: Tensor) -> Advantages:
        return Advantages(grpo_advantages(rewards, rollout.group_size, scale=self.advantage_scale,
                                          eps=self.advantage_eps))
