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

from lightning_trepo.algorithms.advantages import (
    continuation_advantages,
    group_std_scale,
    leave_one_out_mean,
    segment_advantages,
)
from lightning_trepo.algorithms.anchors import (
    OffsetMode,
    build_anchor_values,
    continuation_means,
    fixed_anchor_offsets,
)
from lightning_trepo.algorithms.losses import aggregate_denominator
from lightning_trepo.envs import Environment
from lightning_trepo.errors import check_choice, require
from lightning_trepo.modules.base import (
    OptimizerFactory,
    RLModule,
    RolloutConfig,
    UpdateConfig,
    default_optimizer,
)
from lightning_trepo.ops import masked_whiten
from lightning_trepo.policy import PolicyConfig
from lightning_trepo.rollout.collect import final_rewards
from lightning_trepo.rollout.continuations import (
    BoundaryMarker,
    Continuations,
    append_rows,
    tree_rows,
)
from lightning_trepo.rollout.metrics import timed
from lightning_trepo.rollout.plan import ContinuationPlan, RolloutPlan
from lightning_trepo.types import Advantages, Rollout
from reward_models import Reward

AnchorMode = Literal[OffsetMode, "boundary", "turns"]
StartValue = Literal["loo", "fresh"]
Gate = Literal["none", "mixed", "unsolved"]
AnchorSampling = Literal["batch", "sample"]
AdvantageScale = Literal["none", "group", "whiten"]
ContinuationNorm = Literal["pooled", "responses"]


class TRePO(RLModule):
    """Token-Reinforced Policy Optimization: critic-free per-token advantages from MC continuations."""

    def __init__(
        self,
        reward: Reward,
        policy: PolicyConfig = PolicyConfig(),
        rollout: RolloutConfig = RolloutConfig(),
        update: UpdateConfig = UpdateConfig(),
        optimizer: OptimizerFactory = default_optimizer,
        environment: Environment | None = None,
        num_anchors: int = 2,
        num_continuations: int = 2,
        anchor_mode: AnchorMode = "uniform",
        anchor_every: int = 8,
        boundary_pattern: str = r"\n",
        start_value: StartValue = "loo",
        gate: Gate = "none",
        gate_truncated_reward: float | None = None,
        anchor_sampling: AnchorSampling = "batch",
        truncated_reward: float | None = None,
        train_continuations: bool = False,
        continuation_weight: float = 1.0,
        advantage_scale: AdvantageScale = "none",
        continuation_norm: ContinuationNorm = "pooled",
    ) -> None:
        """
        Args:
            num_anchors: M interior anchors per response.
            num_continuations: K continuations sampled from each anchor's prefix.
            anchor_mode: uniform (M offsets drawn uniformly before generation), every (offsets k, 2k, ...),
                boundary (right after the first M tokens matching ``boundary_pattern``), turns (multi-turn episodes,
                needs ``environment``: the starts of the first M turns after the first, right after an observation;
                continuations go on with the environment). All are stopping times; anchors derived from the final
                length would bias the gradient and are not offered.
            anchor_every: k for ``anchor_mode=every``.
            boundary_pattern: regex on a token's text for ``anchor_mode=boundary`` (e.g. a newline).
            start_value: Û(0): loo (leave-one-out mean of the group's rewards, no extra tokens; needs G >= 2)
                or fresh (mean reward of K fresh samples from the prompt).
            gate: none (continuations at every anchor) or mixed (only for responses whose G-1 siblings' rewards are
                not all equal; elsewhere the anchors collapse and the advantage is exactly RLOO's). The gate reads
                only the siblings, so the estimator stays unbiased. Needs G >= 3. Or unsolved: only for responses with a
                sibling rewarded below ``rollout.val_success_threshold`` (mixed groups, and groups whose siblings all
                failed, where RLOO and GRPO have no signal); closed where every sibling solved the prompt. Also reads
                only the siblings (unbiased). Needs G >= 2.
            gate_truncated_reward: None (the gate reads the siblings' rewards as scored) or what a truncated sibling's
                reward counts as to the gate: at 0, a response cut at ``max_new_tokens`` whose cut-off text happens
                to score never opens it (no continuations where the only success was a lucky truncation). The gate
                still reads only the siblings (unbiased); the estimator keeps every reward. Needs a gate.
            anchor_sampling: batch (one set of uniform offsets per step, shared by the batch) or sample (drawn
                independently for every response; still independent of the response, hence stopping times).
            truncated_reward: None (the reward tree's score) or the reward every truncated response and
                continuation gets instead (VinePPO scores them 0): a response-level reward of its own, so every
                estimate stays unbiased for it.
            train_continuations: also train on the continuations (tree rollouts): each continuation's own tokens get
                ``continuation_weight`` x (RM(c) - mean of its siblings at the anchor). Biased towards later tokens:
                E[g] = sum_t (1 + w E[#anchors before t]) g_t (docs/estimators.md, ``verify-estimators``).
            continuation_weight: w, the weight of a continuation's advantage when ``train_continuations``.
            advantage_scale: none; group (each response and its continuations scaled by 1 / std of its group's
                rewards, GRPO's per-prompt weight, 1 where the std is 0; biased as GRPO is); whiten (VinePPO:
                (A - mean) / std over all trained tokens of the step; biased by the mean shift).
            continuation_norm: how ``train_continuations`` rows enter ``update.aggregation``'s mean: pooled (they
                join it: the responses' share of the step shrinks by a factor that depends on how many continuation
                tokens the step drew) or responses (the mean keeps the responses' own denominator and the
                continuation rows add to it, as in the estimator ``verify-estimators`` states; the same factor over
                every minibatch of the step).
        """
        self._validate(rollout, num_anchors, num_continuations, anchor_mode, anchor_every, boundary_pattern,
                       start_value)
        self._validate_estimator(rollout, gate, gate_truncated_reward, anchor_sampling, continuation_weight,
                                 advantage_scale)
        check_choice("continuation_norm", continuation_norm, ContinuationNorm)
        self._validate_episodes(environment, anchor_mode, train_continuations)
        super().__init__(reward=reward, policy=policy, rollout=rollout, update=update, optimizer=optimizer,
                         environment=environment)
        self.num_anchors, self.num_continuations = num_anchors, num_continuations
        self.anchor_mode, self.anchor_every, self.start_value = anchor_mode, anchor_every, start_value
        self.gate, self.anchor_sampling, self.truncated_reward = gate, anchor_sampling, truncated_reward
        self.gate_truncated_reward = gate_truncated_reward
        self.train_continuations, self.continuation_weight = train_continuations, continuation_weight
        self.advantage_scale, self.continuation_norm = advantage_scale, continuation_norm
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

    @staticmethod
    def _validate_episodes(environment: Environment | None, anchor_mode: str, train_continuations: bool) -> None:
        """Episodes anchor at turn starts only (an offset may fall inside an observation); turn anchors need one."""
        require((environment is None) == (anchor_mode != "turns"), "anchor_mode", anchor_mode,
                "turns with an environment, any other mode without one",
                "turn anchors are the starts of an episode's turns; inside an episode other anchors could fall in "
                "the middle of an environment's observation")
        require(environment is None or not train_continuations, "train_continuations", train_continuations,
                "false with an environment", "continuation rows of episodes are not trained on yet")

    @staticmethod
    def _validate_estimator(rollout: RolloutConfig, gate: str, gate_truncated_reward: float | None,
                            anchor_sampling: str, continuation_weight: float, advantage_scale: str) -> None:
        check_choice("gate", gate, Gate)
        require(gate_truncated_reward is None or gate != "none", "gate_truncated_reward", gate_truncated_reward,
                "null with gate: none", "it sets how the gate reads truncated siblings (use gate: mixed or unsolved)")
        check_choice("anchor_sampling", anchor_sampling, AnchorSampling)
        check_choice("advantage_scale", advantage_scale, AdvantageScale)
        require(gate != "unsolved" or rollout.group_size >= 2, "rollout.group_size", rollout.group_size,
                "an integer >= 2 with gate=unsolved", "the gate reads a response's siblings (or use gate: none)")
        require(gate != "mixed" or rollout.group_size >= 3, "rollout.group_size", rollout.group_size,
                "an integer >= 3 with gate=mixed", "the gate looks for a mixed outcome among a response's G-1 "
                "siblings, which needs at least 2 of them (or use gate: none)")
        require(continuation_weight > 0, "continuation_weight", continuation_weight, "a number > 0")
        require(advantage_scale != "group" or rollout.group_size >= 2, "rollout.group_size", rollout.group_size,
                "an integer >= 2 with advantage_scale=group", "the group std needs two samples of the prompt")

    def rollout_plan(self) -> RolloutPlan:
        """G samples per prompt and K continuations at M anchors of each; fixed anchor offsets are drawn here,
        BEFORE generation (stopping times), and travel in the plan."""
        offsets = None
        if self.anchor_mode not in ("boundary", "turns"):
            offsets = fixed_anchor_offsets(self.num_anchors, self.rollout_cfg.sampling.max_new_tokens,
                                           mode=self.anchor_mode, every=self.anchor_every)
        per_sample = self.anchor_sampling == "sample" and offsets is not None
        request = ContinuationPlan(num_continuations=self.num_continuations, num_anchors=self.num_anchors,
                                   anchor_offsets=offsets, boundary=self._marker,
                                   fresh_start=self.start_value == "fresh",
                                   draw_offsets=self._draw_offsets if per_sample else None,
                                   gate_mixed=self.gate == "mixed", truncated_reward=self.truncated_reward,
                                   gate_truncated_reward=self.gate_truncated_reward,
                                   gate_unsolved_below=(self.rollout_cfg.val_success_threshold
                                                        if self.gate == "unsolved" else None),
                                   turn_anchors=self.anchor_mode == "turns")
        return replace(super().rollout_plan(), continuations=request)

    def _draw_offsets(self, num_samples: int) -> Tensor:
        """``anchor_sampling=sample``: (N, M) offsets drawn independently for every response, after generation."""
        return fixed_anchor_offsets(self.num_anchors, self.rollout_cfg.sampling.max_new_tokens, mode=self.anchor_mode,
                                    every=self.anchor_every, num_samples=num_samples)

    def extend_rollout(self, plan: RolloutPlan, rollout: Rollout, rewards: Tensor) -> tuple[Rollout, dict[str, Tensor]]:
        """The collector samples and scores the plan's K continuations at every valid (gated) anchor (one batched
        pass, one reward call); from their scores build Û, and with ``train_continuations`` the rows to train on
        (``rollout.tree``)."""
        fresh = plan.continuations is not None and plan.continuations.fresh_start
        with timed(rollout.timings, "continuations"):
            final = self.final_rewards(rollout, rewards)
            scored = self.collector(extend=False).continuations(plan, rollout, final)
            cont, scores, positions = scored.continuations, scored.scores, scored.positions
            means = continuation_means(scores, cont.sample_index, cont.anchor_column, tuple(positions.shape))
            start = means[:, 0] if fresh else leave_one_out_mean(final, rollout.group_size)  # Û(0)
            values = build_anchor_values(start, means[:, 1:-1], final, positions)
            tree = self._tree(rollout, cont, scores, final, positions.shape[1]) if self.train_continuations else None
        extended = replace(rollout, anchor_positions=positions, anchor_values=values, tree=tree)
        return extended, {f"trepo/{k}": torch.tensor(v) for k, v in scored.stats().items()}

    def final_rewards(self, rollout: Rollout, rewards: Tensor) -> Tensor:
        """RM(W) as the estimator uses it: NaN -> 0, and ``truncated_reward`` for truncated responses when set."""
        return final_rewards(rewards, rollout.truncated, self.truncated_reward)

    def _tree(self, rollout: Rollout, cont: Continuations, scores: Tensor, final: Tensor, width: int) -> Rollout:
        """The continuations as rows to train on: prompt + prefix as the prompt, the continuation's own tokens as the
        completion, advantage w (RM(c) - mean of its siblings at the anchor), times the group scale if any."""
        adv = self.continuation_weight * continuation_advantages(scores, cont.sample_index, cont.anchor_column,
                                                                 final, width)
        if self.advantage_scale == "group":
            adv = adv * group_std_scale(final, rollout.group_size)[cont.sample_index]
        return tree_rows(rollout, cont, self.engine.pad_id, scores, adv, self.engine.tokenizer)

    def compute_advantages(self, rollout: Rollout, rewards: Tensor) -> Advantages:
        adv = segment_advantages(rollout.anchor_values, rollout.anchor_positions, rollout.completion_mask)
        if self.advantage_scale == "group":
            adv = adv * group_std_scale(self.final_rewards(rollout, rewards), rollout.group_size)[:, None]
        return Advantages(adv)

    def finish_rollout(self, rollout: Rollout) -> tuple[Rollout, dict[str, Tensor]]:
        """The continuation rows to train on appended (``train_continuations``), the step's advantage whitening
        (``advantage_scale=whiten``) and the share of wall-clock time the continuations took."""
        metrics: dict[str, Tensor] = {}
        t_cont = rollout.timings.get("continuations", 0.0)
        metrics["trepo/continuation_time_frac"] = torch.tensor(t_cont / max(sum(rollout.timings.values()), 1e-9))
        if rollout.tree is not None:
            samples = rollout.num_samples
            # a step with no continuation (every gate closed, no anchor) has no rows to add
            rollout = self._with_tree(rollout) if rollout.tree.num_samples else replace(rollout, tree=None)
            metrics["trepo/tree_rows"] = torch.tensor(float(rollout.num_samples - samples))
        if self.advantage_scale == "whiten":
            trained = rollout.trained_mask  # an episode's environment tokens stay out of the statistics
            adv = rollout.advantages * trained
            rollout.advantages = masked_whiten(adv, trained) * trained
        return rollout, metrics

    def _with_tree(self, rollout: Rollout) -> Rollout:
        """The rollout with its continuation rows appended (their π_old and reference log-probs computed as the
        responses' were), ready for the loss; the responses' anchors are dropped (the loss does not read them)."""
        tree = rollout.tree
        assert tree is not None
        with timed(rollout.timings, "logprobs"):
            if rollout.old_logprobs is not None:  # as the responses: a behaviour pass when the update needs one
                tree.old_logprobs = self.no_grad_logprobs(self.policy, tree)
            if rollout.ref_logprobs is not None and self.ref_model is not None:
                tree.ref_logprobs = self.no_grad_logprobs(self.ref_model, tree)
        tree.advantages = tree.advantages[:, None] * tree.completion_mask
        joined = append_rows(replace(rollout, tree=None), tree, self.engine.pad_id)
        if self.continuation_norm == "responses":  # the rows add to the responses' mean instead of diluting it
            mode, length = self.update_cfg.aggregation, self.loss_norm_length
            scale = (aggregate_denominator(joined.trained_mask, mode, length)
                     / aggregate_denominator(rollout.trained_mask, mode, length))
            joined.advantages = joined.advantages * scale
        return joined
