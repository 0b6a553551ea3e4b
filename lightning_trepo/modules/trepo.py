"""TRePO: Token-Reinforced Policy Optimization (He et al. 2025, arXiv 2506.02553), as in design.md §5.

Theorem 2 advantages A_t = U(W_{0,t}) − U(W_{0,t−1}) with U estimated by Monte Carlo only at M
anchor positions per response (stopping times), every token of a segment (s_{j−1}, s_j] getting
Û(s_j) − Û(s_{j−1}). Û(T) = RM(W) exactly; Û(0) is the group's leave-one-out mean or K fresh
samples; Û(s) is the mean reward of K continuations of W_{0,s}. No critic: memory is GRPO's.
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Literal

import torch
from torch import Tensor

from lightning_trepo.algorithms.advantages import leave_one_out_mean, segment_advantages
from lightning_trepo.algorithms.anchors import (
    OffsetMode,
    build_anchor_values,
    continuation_means,
    fixed_anchor_offsets,
)
from lightning_trepo.errors import check_choice, require
from lightning_trepo.modules.base import (
    OptimizerFactory,
    RLModule,
    RolloutConfig,
    UpdateConfig,
    default_optimizer,
)
from lightning_trepo.policy import PolicyConfig
from lightning_trepo.rollout.continuations import (
    BoundaryMarker,
    Continuations,
    planned_anchors,
    request_pairs,
    sample_continuations,
)
from lightning_trepo.rollout.engine import ContinuationPlan, RolloutPlan
from lightning_trepo.rollout.metrics import timed
from lightning_trepo.types import Advantages, Rollout
from reward_models import Reward

AnchorMode = Literal[OffsetMode, "boundary"]
StartValue = Literal["loo", "fresh"]


class TRePO(RLModule):
    """Token-Reinforced Policy Optimization: critic-free per-token advantages from MC continuations."""

    def __init__(
        self,
        reward: Reward,
        policy: PolicyConfig = PolicyConfig(),
        rollout: RolloutConfig = RolloutConfig(),
        update: UpdateConfig = UpdateConfig(),
        optimizer: OptimizerFactory = default_optimizer,
        num_anchors: int = 2,
        num_continuations: int = 2,
        anchor_mode: AnchorMode = "uniform",
        anchor_every: int = 8,
        boundary_pattern: str = r"\n",
        start_value: StartValue = "loo",
    ) -> None:
        """
        Args:
            num_anchors: M interior anchors per response.
            num_continuations: K continuations sampled from each anchor's prefix.
            anchor_mode: uniform (M offsets drawn uniformly before generation), every (offsets k, 2k, ...),
                boundary (right after the first M tokens matching ``boundary_pattern``). All are stopping
                times; anchors derived from the final length would bias the gradient and are not offered.
            anchor_every: k for ``anchor_mode=every``.
            boundary_pattern: regex on a token's text for ``anchor_mode=boundary`` (e.g. a newline).
            start_value: Û(0): loo (leave-one-out mean of the group's rewards, no extra tokens; needs G >= 2)
                or fresh (mean reward of K fresh samples from the prompt).
        """
        self._validate(rollout, num_anchors, num_continuations, anchor_mode, anchor_every, boundary_pattern,
                       start_value)
        super().__init__(reward=reward, policy=policy, rollout=rollout, update=update, optimizer=optimizer)
        self.num_anchors, self.num_continuations = num_anchors, num_continuations
        self.anchor_mode, self.anchor_every, self.start_value = anchor_mode, anchor_every, start_value
        self._marker = BoundaryMarker(self.tokenizer, boundary_pattern) if anchor_mode == "boundary" else None

    @staticmethod
    def _validate(rollout: RolloutConfig, num_anchors: int, num_continuations: int, anchor_mode: str,
                  anchor_every: int, boundary_pattern: str, start_value: str) -> None:
        """Every cross-field constraint, checked before anything loads."""
        check_choice("anchor_mode", anchor_mode, AnchorMode)
        check_choice("start_value", start_value, StartValue)
        require(start_value != "loo" or rollout.group_size >= 2, "rollout.group_size", rollout.group_size,
                "an integer >= 2 with start_value=loo", "the leave-one-out U(0) needs another sample of the prompt "
                "(or use start_value: fresh)")
        require(num_anchors >= 0, "num_anchors", num_anchors, "an integer >= 0")
        require(num_continuations >= 1, "num_continuations", num_continuations, "an integer >= 1")
        interior = rollout.sampling.max_new_tokens - 1
        if anchor_mode == "uniform":
            require(num_anchors <= interior, "num_anchors", num_anchors, f"at most {interior}",
                    f"only {interior} interior positions below rollout.sampling.max_new_tokens")
        if anchor_mode == "every":
            require(anchor_every >= 1, "anchor_every", anchor_every, "an integer >= 1")
            require(num_anchors * anchor_every <= interior, "num_anchors", num_anchors,
                    f"at most {interior // anchor_every} with anchor_every={anchor_every}",
                    f"anchors every {anchor_every} tokens must fit below rollout.sampling.max_new_tokens")
        if anchor_mode == "boundary":
            try:
                re.compile(boundary_pattern)
            except re.error as err:
                require(False, "boundary_pattern", boundary_pattern, "a valid Python regular expression", str(err))

    def rollout_plan(self) -> RolloutPlan:
        """G samples per prompt and K continuations at M anchors of each; fixed anchor offsets are drawn here,
        BEFORE generation (stopping times), and travel in the plan."""
        offsets = None
        if self.anchor_mode != "boundary":
            offsets = fixed_anchor_offsets(self.num_anchors, self.rollout_cfg.sampling.max_new_tokens,
                                           mode=self.anchor_mode, every=self.anchor_every)
        request = ContinuationPlan(num_continuations=self.num_continuations, num_anchors=self.num_anchors,
                                   anchor_offsets=offsets, boundary=self._marker,
                                   fresh_start=self.start_value == "fresh")
        return replace(super().rollout_plan(), continuations=request)

    def extend_rollout(self, plan: RolloutPlan, rollout: Rollout, rewards: Tensor) -> tuple[Rollout, dict[str, Tensor]]:
        """Sample and score the plan's K continuations at every valid anchor (one batched pass), build Û."""
        request = plan.continuations
        with timed(rollout.timings, "continuations"):
            positions, valid = planned_anchors(request, rollout)
            rows, cols = request_pairs(valid, fresh_start=request.fresh_start)
            cont = sample_continuations(self.engine, self.policy, rollout, positions, rows, cols,
                                        request.num_continuations, plan.sampling)
            means = self._continuation_means(rollout, cont, positions.shape)
            final = torch.nan_to_num(rewards, nan=0.0)
            start = means[:, 0] if request.fresh_start else leave_one_out_mean(final, rollout.group_size)  # Û(0)
            values = build_anchor_values(start, means[:, 1:-1], final, positions)
        stats = {"continuation_tokens": float(cont.generated_tokens), "continuation_calls": float(cont.num_calls),
                 "anchors_valid_frac": float(valid[:, 1:-1].float().mean()) if self.num_anchors else 0.0}
        extended = replace(rollout, anchor_positions=positions, anchor_values=values)
        return extended, {f"trepo/{k}": torch.tensor(v) for k, v in stats.items()}

    def _continuation_means(self, rollout: Rollout, cont: Continuations, shape: torch.Size) -> Tensor:
        """(N, M+2) mean reward of the K continuations per anchor (NaN where none were sampled)."""
        if cont.sample_index.numel() == 0:
            return torch.full(shape, float("nan"), device=self.device)
        scores = torch.nan_to_num(self.score_samples(cont.to_samples(rollout)).rewards.to(self.device), nan=0.0)
        return continuation_means(scores, cont.sample_index, cont.anchor_column, (shape[0], shape[1]))

    def compute_advantages(self, rollout: Rollout, rewards: Tensor) -> Advantages:
        return Advantages(segment_advantages(rollout.anchor_values, rollout.anchor_positions, rollout.completion_mask))

    def make_rollout(self, batch: dict) -> tuple[Rollout, dict[str, Tensor]]:
        """The base's rollout, plus the share of its wall-clock time the continuations took."""
        rollout, metrics = super().make_rollout(batch)
        t_cont = rollout.timings["continuations"]
        metrics["trepo/continuation_time_frac"] = torch.tensor(t_cont / max(sum(rollout.timings.values()), 1e-9))
        return rollout, metrics
