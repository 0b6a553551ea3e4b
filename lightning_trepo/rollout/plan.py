"""What an algorithm asks of the shared rollout path: the plan types, apart from the engine that fulfils them.

An algorithm never calls ``generate`` itself. It declares a :class:`RolloutPlan` (samples per prompt, sampling
settings, a greedy baseline per prompt, continuations from prefixes) and :mod:`lightning_trepo.rollout.collect`
produces the scored rollout with :class:`~lightning_trepo.rollout.engine.RolloutEngine`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

from lightning_trepo.errors import require


@dataclass
class SamplingConfig:
    """How responses are sampled from the policy."""

    temperature: float = 1.0
    """Softmax temperature; log-probs for the loss use the same temperature."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    top_k: int = 0
    """Top-k sampling (0 = off)."""
    max_new_tokens: int = 32
    """Maximum completion length; a completion without EOS by then counts as truncated."""
    stop_at_eos: bool = True
    """Stop a sequence at EOS; False generates ``max_new_tokens`` always (masks still end at EOS)."""

    def __post_init__(self) -> None:
        require(self.temperature > 0, "rollout.sampling.temperature", self.temperature, "a number > 0",
                "greedy decoding is a plan's greedy flag, not temperature 0")
        require(0 < self.top_p <= 1, "rollout.sampling.top_p", self.top_p, "a number in (0, 1]")
        require(self.max_new_tokens >= 1, "rollout.sampling.max_new_tokens", self.max_new_tokens, "an integer >= 1")


@dataclass
class ContinuationPlan:
    """K continuations from M anchor prefixes W_{0,s} of each response (TRePO), fulfilled in one batched pass by
    :mod:`lightning_trepo.rollout.continuations`. Anchors are stopping times: offsets drawn before generation, or the
    positions right after the first M boundary tokens."""

    num_continuations: int
    """K continuations sampled from each anchor's prefix."""
    num_anchors: int
    """M interior anchors per response."""
    anchor_offsets: Tensor | None = None
    """(M,) interior offsets drawn before generation; None = boundary anchors (``boundary``)."""
    boundary: Callable[[Tensor], Tensor] | None = None
    """(N, L) completion ids -> (N, L) bool, True on the tokens that end a boundary (used without offsets)."""
    fresh_start: bool = False
    """Also K fresh samples from each prompt alone (the empty prefix, anchor column 0)."""
    draw_offsets: Callable[[int], Tensor] | None = None
    """N -> (N, M) interior offsets drawn for each of the N responses once they are generated (fresh randomness,
    independent of the responses: still stopping times); used instead of ``anchor_offsets`` when set."""
    gate_mixed: bool = False
    """Continuations only for responses whose G-1 siblings' rewards are not all equal; elsewhere the interior anchors
    collapse to T (no continuations; TRePO's advantage is then exactly RLOO's)."""
    gate_unsolved_below: float | None = None
    """Continuations only for responses with a sibling rewarded below this (some sibling failed: mixed groups and
    groups of failures); closed where every sibling solved the prompt. None = off."""
    gate_truncated_reward: float | None = None
    """What a truncated sibling's reward counts as when a gate reads the siblings (None: its reward): at 0 a response
    cut at ``max_new_tokens`` never opens the gate, however its cut-off text scores. The estimator keeps its reward."""
    truncated_reward: float | None = None
    """The reward every truncated response and continuation gets instead of the reward tree's (None: the tree's)."""
    turn_anchors: bool = False
    """Multi-turn episodes: anchors at the starts of the first M turns after the first (right after an observation),
    instead of offsets or boundaries; the continuations go on with the environment."""


@dataclass
class RolloutPlan:
    """What an algorithm asks of the rollout path for one batch of prompts."""

    group_size: int = 1
    """G samples per prompt."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Sampling settings; their length budget and ``stop_at_eos`` also bound greedy decoding."""
    greedy: bool = False
    """Decode the samples greedily (argmax) instead of sampling, with the same length budget (validation)."""
    greedy_baseline: bool = False
    """Also produce one greedy response per prompt (ReMax); scored with the samples in one call."""
    need_ref_logprobs: bool = False
    """Compute reference-policy log-probs (KL penalty)."""
    dynamic_sampling: bool = False
    """DAPO dynamic sampling: keep only groups whose rewards are not all equal, sampling more prompts to refill the
    batch (:mod:`lightning_trepo.rollout.dynamic_sampling`)."""
    max_extra_rounds: int = 0
    """Dynamic sampling: the most extra batches of prompts sampled per rollout."""
    continuations: ContinuationPlan | None = None
    """Continuations from prefixes of each response, sampled after the responses are scored (TRePO)."""


@dataclass
class Generated:
    """Token ids of a batch of generated completions (right padded, mask through the first EOS)."""

    completion_ids: Tensor
    completion_mask: Tensor
    truncated: Tensor
    num_calls: int = 1
