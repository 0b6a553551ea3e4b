"""Core data containers and the shape glossary.

Shapes used throughout the project:

- ``B``: prompts in a batch, ``G``: samples per prompt (group size), ``N = B * G`` samples.
- ``P``: padded prompt length (prompts are LEFT padded), ``L``: padded completion length
  (completions are RIGHT padded; the mask includes the EOS token and nothing after it).
- Samples of one prompt are contiguous: sample ``n`` belongs to group ``n // G``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from reward_models.types import Samples


def _per_sample(*default: Any) -> Any:
    """A per-sample field: one row per sample, sliced by :meth:`Rollout.select` (``default``: optional field)."""
    if default:
        return field(default=default[0], metadata={"per_sample": True})
    return field(metadata={"per_sample": True})


@dataclass
class Rollout:
    """What the rollout engine hands to an algorithm: N sampled responses and their bookkeeping.

    Fields marked per-sample (``PER_SAMPLE``) hold one row per sample and are what :meth:`select` slices; the
    rest describe the whole rollout. The engine fills the samples (and the planned greedy responses, ``greedy``), the
    module fills the scores, log-probs and advantages, an algorithm the fields its plan declares.
    """

    prompt_ids: Tensor = _per_sample()  # (N, P) left padded
    prompt_mask: Tensor = _per_sample()  # (N, P) 1 = real prompt token
    completion_ids: Tensor = _per_sample()  # (N, L) right padded
    completion_mask: Tensor = _per_sample()  # (N, L) 1 = real completion token (EOS included)
    group_index: Tensor = _per_sample()  # (N,) long, index of the prompt within the batch
    group_size: int  # G
    prompts: list[str] = _per_sample()  # (N,) prompt text as the policy saw it
    completions: list[str] = _per_sample()  # (N,) decoded completion text (special tokens stripped)
    metadata: list[dict[str, Any]] = _per_sample()  # (N,) the dataset row's other columns
    truncated: Tensor = _per_sample()  # (N,) bool, no EOS within max_new_tokens
    loss_mask: Tensor | None = _per_sample(None)  # (N, L) 1 = a token the policy sampled (trained); None = mask
    old_logprobs: Tensor | None = _per_sample(None)  # (N, L) behaviour-policy token log-probs
    ref_logprobs: Tensor | None = _per_sample(None)  # (N, L) reference-policy token log-probs
    values: Tensor | None = _per_sample(None)  # (N, L) behaviour value estimates (PPO)
    rewards: Tensor | None = _per_sample(None)  # (N,) the trained rewards (NaN = 0)
    advantages: Tensor | None = _per_sample(None)  # (N,) or (N, L) what the policy loss weighs
    returns: Tensor | None = _per_sample(None)  # (N, L) value targets (PPO)
    token_rewards: Tensor | None = _per_sample(None)  # (N, L) per-token rewards GAE reads (PPO)
    anchor_positions: Tensor | None = _per_sample(None)  # (N, M+2) anchor positions s_0 = 0 .. s_{M+1} = T (TRePO)
    anchor_values: Tensor | None = _per_sample(None)  # (N, M+2) Û at each anchor (TRePO)
    greedy: Rollout | None = None  # B greedy responses, one per prompt (ReMax's plan)
    greedy_rewards: Tensor | None = None  # (B,) the greedy responses' rewards: ReMax's baseline
    tree: Rollout | None = None  # TRePO's continuations as rows to train on (prompt + prefix -> continuation)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per rollout phase (generate, score, ...)

    PER_SAMPLE: ClassVar[tuple[str, ...]]

    @property
    def num_samples(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def lengths(self) -> Tensor:
        """(N,) number of real completion tokens of each sample."""
        return self.completion_mask.sum(-1)

    @property
    def trained_mask(self) -> Tensor:
        """(N, L) the tokens the loss, KL, entropy and generated-token counts cover: ``loss_mask`` (multi-turn
        episodes: the model's turns, not the environment's tokens, which are attended but never trained on), or
        ``completion_mask`` when there is none."""
        return self.completion_mask if self.loss_mask is None else self.loss_mask

    def select(self, index: Tensor) -> Rollout:
        """Rows ``index`` of every per-sample field (used for minibatches and chunks); the rest is shared."""
        idx = index.tolist()

        def pick(x: Any) -> Any:
            if x is None:
                return None
            return [x[i] for i in idx] if isinstance(x, list) else x[index]

        return replace(self, **{name: pick(getattr(self, name)) for name in self.PER_SAMPLE})

    def to_samples(self, width: int | None = None, pad_id: int = 0) -> Samples:
        """The reward layer's view of these N samples, on the CPU; ``width`` right-pads the completion tokens
        (with ``pad_id``, mask 0) so that several rollouts can be scored as one batch."""
        ids, mask = self.completion_ids.cpu(), self.completion_mask.cpu()
        extra = (width or ids.shape[1]) - ids.shape[1]
        if extra > 0:
            ids, mask = F.pad(ids, (0, extra), value=pad_id), F.pad(mask, (0, extra), value=0)
        return Samples(prompts=list(self.prompts), completions=list(self.completions), completion_ids=ids,
                       completion_mask=mask, group_index=self.group_index.cpu(), metadata=list(self.metadata))


Rollout.PER_SAMPLE = tuple(f.name for f in fields(Rollout) if f.metadata.get("per_sample"))


@dataclass
class Advantages:
    """What an algorithm's ``compute_advantages`` hook returns, the hook's whole contract: the advantages the policy
    loss weighs, the metrics of their computation and, for an algorithm with a critic, its per-token targets. The
    hook reads the rollout and writes nothing; :meth:`write_into` stores the result in the rollout's fields."""

    advantages: Tensor  # (N,) one per response, or (N, L) per token
    metrics: dict[str, Tensor] = field(default_factory=dict)  # scalar metrics of the computation
    returns: Tensor | None = None  # (N, L) value targets (PPO)
    token_rewards: Tensor | None = None  # (N, L) per-token rewards GAE read (PPO)

    def write_into(self, rollout: Rollout) -> None:
        """Set ``rollout.advantages`` and, where computed, ``returns`` and ``token_rewards``."""
        rollout.advantages = self.advantages
        if self.returns is not None:
            rollout.returns = self.returns
        if self.token_rewards is not None:
            rollout.token_rewards = self.token_rewards


@dataclass
class LossOutput:
    """A scalar loss to back-propagate and detached scalar metrics to log."""

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.metrics = {k: v.detach() if isinstance(v, Tensor) else torch.tensor(float(v))
                        for k, v in self.metrics.items()}
