"""Containers passed through a reward tree. Importable without lightning_trepo."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor


@dataclass
class Samples:
    """N (prompt, completion) pairs to score.

    ``metadata[i]`` holds the dataset row's other columns for sample i (e.g. ``{"answer": "42"}``).
    ``group_index[i]`` is the prompt a sample belongs to (samples of one prompt share it).
    Token fields are optional: text-only rewards never need them.
    """

    prompts: list[str]
    completions: list[str]
    completion_ids: Tensor | None = None  # (N, L)
    completion_mask: Tensor | None = None  # (N, L)
    group_index: Tensor | None = None  # (N,) long
    metadata: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.completions)
        if len(self.prompts) != n:
            raise ValueError(f"Samples: {len(self.prompts)} prompts but {n} completions")
        if not self.metadata:
            self.metadata = [{} for _ in range(n)]
        if len(self.metadata) != n:
            raise ValueError(f"Samples: {len(self.metadata)} metadata rows but {n} completions")
        if self.group_index is None:
            self.group_index = torch.arange(n)

    def __len__(self) -> int:
        return len(self.completions)

    def select(self, index: Sequence[int]) -> "Samples":
        """The sub-batch of rows ``index`` (in that order)."""
        idx = list(index)
        t = torch.as_tensor(idx, dtype=torch.long)
        return Samples(
            prompts=[self.prompts[i] for i in idx],
            completions=[self.completions[i] for i in idx],
            completion_ids=None if self.completion_ids is None else self.completion_ids[t],
            completion_mask=None if self.completion_mask is None else self.completion_mask[t],
            group_index=None if self.group_index is None else self.group_index[t],
            metadata=[self.metadata[i] for i in idx],
        )

    def lengths(self) -> Tensor:
        """(N,) completion lengths in tokens when token ids are known, else in characters."""
        if self.completion_mask is not None:
            return self.completion_mask.sum(-1).float()
        return torch.tensor([float(len(c)) for c in self.completions])


@dataclass
class RewardOutput:
    """Per-sample rewards and per-sample metrics.

    ``rewards``: (N,) float; NaN means "does not apply to this sample".
    ``metrics``: per-sample (N,) tensors under keys RELATIVE to the node that produced them
    (``"gated/correct"``); the trainer prefixes ``reward/`` and logs mean and std of each.
    """

    rewards: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)
