"""ReMax (Li et al. 2023, arXiv 2310.10505): REINFORCE with the greedy response's reward as the baseline."""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from lightning_trepo.algorithms.advantages import remax_advantages
from lightning_trepo.modules.base import RLModule
from lightning_trepo.rollout.plan import RolloutPlan
from lightning_trepo.types import Advantages, Rollout


class ReMax(RLModule):
    """ReMax: A_i = r_i − r(greedy response to sample i's prompt), the same for every token.

    Its plan asks the rollout path for one greedy response per prompt besides the G samples; the base
    scores samples and greedy responses in ONE call of the reward tree (so batch-normalising rewards
    treat them alike). The greedy response does not depend on the samples, so the gradient is unbiased.
    Works with ``group_size = 1``. Cost: one extra (greedy) response per prompt.
    """

    def rollout_plan(self) -> RolloutPlan:
        return replace(super().rollout_plan(), greedy_baseline=True)

    def compute_advantages(self, rollout: Rollout, rewards: Tensor) -> Advantages:
        greedy = torch.nan_to_num(rollout.greedy_rewards, nan=0.0)  # NaN = 0, as for the samples
        metrics = {"reward/greedy": greedy.float().mean().detach().cpu()}
        return Advantages(remax_advantages(rewards, greedy, rollout.group_size), metrics)
