"""The whole scored rollout of one plan: generate -> dynamic sampling -> ONE reward call -> extensions.

Continuations from anchor prefixes (a plan's :class:`~lightning_trepo.rollout.plan.ContinuationPlan`, TRePO) are
sampled and scored here too (:meth:`Collector.continuations`); what an estimator makes of their scores is its own.

:class:`Collector` takes everything it needs explicitly (the engine, the policy, the reward call, the device, the
refill stream of extra prompts, the collective "any rank" flag and an optional extension step) and returns a
:class:`Collected`: the rollout, its raw rewards, the reward tree's per-node metrics and the collection's own
metrics. What comes after (behaviour / reference log-probs, advantages, the loss) is the algorithm module's.

The reward tree runs only through the ``score`` callable (``RLModule.score_samples``); samples and a plan's greedy
responses go through it in one call, so batch-level reward state (normalisation, judge batching) sees them together.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from lightning_trepo.algorithms.advantages import siblings_mixed, siblings_unsolved
from lightning_trepo.algorithms.anchors import turn_anchor_positions
from lightning_trepo.envs import Environment
from lightning_trepo.rollout.continuations import Continuations, planned_anchors, request_pairs, sample_continuations
from lightning_trepo.rollout.dynamic_sampling import Scored, dynamic_sampling
from lightning_trepo.rollout.engine import RolloutEngine
from lightning_trepo.rollout.episode_continuations import episode_continuations
from lightning_trepo.rollout.episodes import EpisodeConfig, plan_rollout
from lightning_trepo.rollout.metrics import timed
from lightning_trepo.rollout.plan import ContinuationPlan, RolloutPlan
from lightning_trepo.types import Rollout
from reward_models import RewardOutput, Samples

Score = Callable[[Samples], RewardOutput]
"""The one call of the reward tree (``RLModule.score_samples``)."""
Extend = Callable[[RolloutPlan, Rollout, Tensor], tuple[Rollout, dict[str, Tensor]]]
"""A step after scoring (``RLModule.extend_rollout``: TRePO's continuations): (plan, rollout, raw rewards) -> the
extended rollout (a new one) and the extension's metrics."""


def reward_prompts(batch: dict[str, Any]) -> list[str]:
    """Prompt texts the reward tree reads: before the chat template when the data module provides them."""
    return batch.get("raw_prompts") or batch["prompts"]


def local_flag(flag: bool) -> bool:
    """The "any rank" of a single process: the flag itself."""
    return flag


def no_refill() -> Iterator[dict[str, Any]] | None:
    """No stream of extra prompt batches: dynamic sampling filters and fills, never refills."""
    return None


def score_rollouts(score: Score, rollouts: list[Rollout], pad_id: int,
                   device: torch.device) -> list[tuple[Tensor, dict[str, Tensor]]]:
    """Score several rollouts in ONE ``score`` call and split the (N,) rewards (on ``device``) and the per-sample
    metrics back per rollout (a metric that is not per sample goes to each). The logged total and the trained
    total are the same tensor."""
    width = max(r.completion_ids.shape[1] for r in rollouts)
    samples = Samples.concat([r.to_samples(width, pad_id) for r in rollouts])
    out = score(samples)
    sizes = [r.num_samples for r in rollouts]
    rewards = out.rewards.to(device).split(sizes)
    metrics = {k: v.split(sizes) if v.dim() and v.shape[0] == len(samples) else [v] * len(sizes)
               for k, v in out.metrics.items()}
    return [(rewards[i], {k: v[i] for k, v in metrics.items()}) for i in range(len(sizes))]


def final_rewards(rewards: Tensor, truncated: Tensor, truncated_reward: float | None) -> Tensor:
    """RM(W) as an estimator uses it: r = 0 where NaN, and r = ``truncated_reward`` where truncated (when set)."""
    final = torch.nan_to_num(rewards, nan=0.0)
    if truncated_reward is None:
        return final
    return torch.where(truncated.to(final.device), torch.full_like(final, truncated_reward), final)


@dataclass
class ScoredContinuations:
    """A plan's continuations, sampled at the anchors of a rollout's responses and scored."""

    positions: Tensor
    """(N, M+2) anchor positions (0, interior anchors, T); anchors the gate closed collapse to T."""
    valid: Tensor
    """(N, M+2) bool, the anchors continued from (columns 0 and M+1 as :func:`planned_anchors` marks them)."""
    continuations: Continuations
    """The K continuations of every (sample, anchor column) pair that needed them."""
    scores: Tensor
    """(C,) each continuation's reward (0 where NaN; the plan's ``truncated_reward`` for truncated ones)."""

    def stats(self) -> dict[str, float]:
        """Generated tokens and calls, the share of interior anchors continued, the continuations' mean reward."""
        interior = self.valid[:, 1:-1]
        return {"continuation_tokens": float(self.continuations.generated_tokens),
                "continuation_calls": float(self.continuations.num_calls),
                "anchors_valid_frac": float(interior.float().mean()) if interior.shape[1] else 0.0,
                "continuation_reward": float(self.scores.mean()) if self.scores.numel() else float("nan")}


@dataclass
class Collected:
    """A scored rollout and what collecting it measured."""

    rollout: Rollout
    """The samples (+ ``greedy`` / ``greedy_rewards`` when planned, + what the extension adds); ``timings`` holds the
    seconds of ``generate``, ``score`` and any extension phase."""
    rewards: Tensor
    """(N,) raw rewards of the samples (NaN = the reward does not apply)."""
    components: dict[str, Tensor]
    """The reward tree's per-node metrics of the samples."""
    metrics: dict[str, Tensor] = field(default_factory=dict)
    """The collection's own metrics: ``dynamic/*`` (dynamic sampling) and the extension's (``trepo/*``)."""


class Collector:
    """Fulfils a :class:`RolloutPlan` on a batch of prompts and scores it (see the module docstring)."""

    def __init__(self, engine: RolloutEngine, policy: nn.Module, score: Score, device: torch.device,
                 refill: Callable[[], Iterator[dict[str, Any]] | None] = no_refill,
                 any_rank: Callable[[bool], bool] = local_flag,
                 extend: Extend | None = None, environment: Environment | None = None,
                 episode: EpisodeConfig | None = None) -> None:
        """
        Args:
            engine: generates the samples and greedy responses.
            policy: the model that generates (the behaviour policy).
            score: the one call of the reward tree.
            device: where the rewards go.
            refill: returns dynamic sampling's stream of extra prompt batches (None: filter only, never refill);
                called only when a plan samples dynamically.
            any_rank: a flag OR-ed over the data-parallel ranks (every rank makes the same generate calls).
            extend: a step after scoring (TRePO's continuations), or None.
            environment: each sample is a multi-turn episode with this environment (None: single responses).
            episode: the episodes' limits (``rollout.episode``; None: :class:`EpisodeConfig`'s defaults).
        """
        self.engine, self.policy, self.score_fn, self.device = engine, policy, score, device
        self.refill, self.any_rank, self.extend = refill, any_rank, extend
        self.environment, self.episode = environment, episode if episode is not None else EpisodeConfig()

    def generate(self, plan: RolloutPlan, batch: dict[str, Any], greedy: Rollout | None = None) -> Rollout:
        """The plan's samples (and greedy responses) for a prompt batch (``prompts`` or ``raw_prompts``,
        ``prompt_ids``, ``metadata``): single responses from the engine, or, with an ``environment``, multi-turn
        episodes (:func:`~lightning_trepo.rollout.episodes.plan_rollout`). ``greedy``: greedy responses already
        decoded by this same fixed policy, attached as the plan's greedy baseline instead of decoding them again."""
        decode = replace(plan, greedy_baseline=False) if greedy is not None else plan
        rollout = plan_rollout(self.engine, self.policy, decode, reward_prompts(batch), batch["prompt_ids"],
                               batch["metadata"], self.device, self.environment, self.episode)
        if greedy is not None and plan.greedy_baseline:
            rollout.greedy = greedy
        return rollout

    def score(self, rollout: Rollout) -> tuple[Tensor, dict[str, Tensor]]:
        """The samples' rewards and per-node metrics; planned greedy responses are scored in the same reward call
        and their rewards go in ``rollout.greedy_rewards``."""
        with timed(rollout.timings, "score"):
            if rollout.greedy is None:
                return score_rollouts(self.score_fn, [rollout], self.engine.pad_id, self.device)[0]
            (rewards, components), (rollout.greedy_rewards, _) = score_rollouts(
                self.score_fn, [rollout, rollout.greedy], self.engine.pad_id, self.device)
            return rewards, components

    def sample_and_score(self, plan: RolloutPlan, batch: dict[str, Any], greedy: Rollout | None = None,
                         ) -> tuple[Rollout, Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """Generate and score; with ``plan.dynamic_sampling`` keep only informative groups and refill from more
        prompts (DAPO). Returns the rollout, its rewards, per-node reward metrics and ``dynamic/*`` metrics."""
        def one(prompts: dict[str, Any]) -> Scored:
            rollout = self.generate(plan, prompts, greedy)
            return (rollout, *self.score(rollout))

        if not plan.dynamic_sampling:
            return (*one(batch), {})
        return dynamic_sampling(one, batch, self.refill(), plan.max_extra_rounds, self.engine.pad_id, self.any_rank)

    def collect(self, plan: RolloutPlan, batch: dict[str, Any], greedy: Rollout | None = None) -> Collected:
        """The whole scored rollout: :meth:`sample_and_score`, then the extension step (if any)."""
        rollout, rewards, components, metrics = self.sample_and_score(plan, batch, greedy)
        if self.extend is not None:
            rollout, extended = self.extend(plan, rollout, rewards)
            metrics = {**metrics, **extended}
        return Collected(rollout, rewards, components, metrics)

    def continuations(self, plan: RolloutPlan, rollout: Rollout, final: Tensor) -> ScoredContinuations:
        """Sample the plan's K continuations at every valid (gated) anchor of the responses in one batched pass and
        score them in one reward call; ``final`` (N,) is RM(W) as :func:`final_rewards` gives it (the gate reads
        it)."""
        request = plan.continuations
        if request is None:
            raise ValueError("Collector.continuations: the plan has no ContinuationPlan (plan.continuations)")
        positions, valid = self.anchors(request, rollout, final)
        rows, cols = request_pairs(valid, fresh_start=request.fresh_start)
        if self.environment is None:
            cont = sample_continuations(self.engine, self.policy, rollout, positions, rows, cols,
                                        request.num_continuations, plan.sampling)
        else:  # each continuation replays its prefix's turns into a fresh environment and plays the episode on
            cont = episode_continuations(self.engine, self.policy, self.environment, self.episode, rollout, positions,
                                         rows, cols, request.num_continuations, plan.sampling)
        return ScoredContinuations(positions, valid, cont, self.score_continuations(request, rollout, cont))

    def anchors(self, request: ContinuationPlan, rollout: Rollout, final: Tensor) -> tuple[Tensor, Tensor]:
        """(positions, valid), each (N, M+2): per-response offsets when the plan draws them (now, from fresh
        randomness), or the starts of an episode's turns (``turn_anchors``), then the gate, whose closed anchors
        collapse to T."""
        if request.draw_offsets is not None:
            request = replace(request, anchor_offsets=request.draw_offsets(rollout.num_samples))
        if request.turn_anchors:
            if rollout.loss_mask is None:
                raise ValueError("ContinuationPlan.turn_anchors (TRePO anchor_mode: turns) needs a multi-turn rollout "
                                 "(Rollout.loss_mask is None: no environment)")
            positions, valid = turn_anchor_positions(rollout.trained_mask, rollout.completion_mask, request.num_anchors)
        else:
            positions, valid = planned_anchors(request, rollout)
        gate, seen = None, final  # the siblings' rewards as the gate reads them
        if request.gate_truncated_reward is not None:
            seen = final_rewards(final, rollout.truncated, request.gate_truncated_reward)
        if request.gate_mixed:
            gate = siblings_mixed(seen, rollout.group_size)
        elif request.gate_unsolved_below is not None:
            gate = siblings_unsolved(seen, rollout.group_size, request.gate_unsolved_below)
        if gate is not None:
            valid[:, 1:-1] &= gate.to(valid.device)[:, None]
            positions[:, 1:-1] = torch.where(valid[:, 1:-1], positions[:, 1:-1], positions[:, -1:])
        return positions, valid

    def score_continuations(self, request: ContinuationPlan, rollout: Rollout, cont: Continuations) -> Tensor:
        """(C,) the reward of every continuation, each scored as a full response to its sample's prompt, in one
        reward call (0 where NaN; the plan's ``truncated_reward`` for truncated ones when set)."""
        if cont.sample_index.numel() == 0:
            return torch.zeros(0, device=self.device)
        scores = torch.nan_to_num(self.score_fn(cont.to_samples(rollout)).rewards.to(self.device), nan=0.0)
        if request.truncated_reward is not None and cont.truncated is not None:
            scores = torch.where(cont.truncated.to(self.device), torch.full_like(scores, request.truncated_reward),
                                 scores)
        return scores
