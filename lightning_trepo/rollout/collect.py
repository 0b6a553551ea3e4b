"""The whole scored rollout of one plan: generate -> dynamic sampling -> ONE reward call -> extensions.

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

from lightning_trepo.envs import Environment
from lightning_trepo.rollout.dynamic_sampling import Scored, dynamic_sampling
from lightning_trepo.rollout.engine import RolloutEngine
from lightning_trepo.rollout.episodes import EpisodeConfig, plan_rollout
from lightning_trepo.rollout.metrics import timed
from lightning_trepo.rollout.plan import RolloutPlan
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
