"""Core data containers and the shape glossary.

Shapes used throughout the project:

- ``B``: prompts in a batch, ``G``: samples per prompt (group size), ``N = B * G`` samples.
- ``P``: padded prompt length (prompts are LEFT padded), ``L``: padded completion length
  (completions are RIGHT padded; the mask includes the EOS token and nothing after it).
- Samples of one prompt are contiguous: sample ``n`` belongs to group ``n // G``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class Rollout:
    """What the rollout engine hands to an algorithm: N sampled responses and their bookkeeping."""

    prompt_ids: Tensor  # (N, P) left padded
    prompt_mask: Tensor  # (N, P) 1 = real prompt token
    completion_ids: Tensor  # (N, L) right padded
    completion_mask: Tensor  # (N, L) 1 = real completion token (EOS included)
    group_index: Tensor  # (N,) long, index of the prompt within the batch
    group_size: int  # G
    prompts: list[str]  # (N,) prompt text as the policy saw it
    completions: list[str]  # (N,) decoded completion text (special tokens stripped)
    metadata: list[dict[str, Any]]  # (N,) the dataset row's other columns
    truncated: Tensor  # (N,) bool, no EOS within max_new_tokens
    old_logprobs: Tensor | None = None  # (N, L) behaviour-policy token log-probs
    ref_logprobs: Tensor | None = None  # (N, L) reference-policy token log-probs
    values: Tensor | None = None  # (N, L) value estimates (PPO)
    extras: dict[str, Any] = field(default_factory=dict)  # plan-specific results (baselines, continuations)

    @property
    def num_samples(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def lengths(self) -> Tensor:
        """(N,) number of real completion tokens of each sample."""
        return self.completion_mask.sum(-1)

    def select(self, index: Tensor) -> "Rollout":
        """Rows ``index`` of every per-sample field (used for minibatches). Text fields follow."""
        idx = index.tolist()

        def pick(x: Any) -> Any:
            if isinstance(x, Tensor) and x.dim() > 0 and x.shape[0] == self.num_samples:
                return x[index]
            return x

        return Rollout(
            prompt_ids=pick(self.prompt_ids),
            prompt_mask=pick(self.prompt_mask),
            completion_ids=pick(self.completion_ids),
            completion_mask=pick(self.completion_mask),
            group_index=pick(self.group_index),
            group_size=self.group_size,
            prompts=[self.prompts[i] for i in idx],
            completions=[self.completions[i] for i in idx],
            metadata=[self.metadata[i] for i in idx],
            truncated=pick(self.truncated),
            old_logprobs=pick(self.old_logprobs),
            ref_logprobs=pick(self.ref_logprobs),
            values=pick(self.values),
            extras={k: pick(v) for k, v in self.extras.items()},
        )


@dataclass
class LossOutput:
    """A scalar loss to back-propagate and detached scalar metrics to log."""

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.metrics = {k: v.detach() if isinstance(v, Tensor) else torch.tensor(float(v)) for k, v in self.metrics.items()}
