"""Containers passed through a reward tree. Importable without lightning_trepo."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

#: Metadata key under which the data layer records the chat a prompt was rendered from (a list of
#: ``{"role", "content"}`` messages) when the policy's chat template produced the prompt. It rides
#: with the row's other columns through rollouts, rollout files and remote rewards; read it with
#: :attr:`Samples.prompt_messages`. Rewards never receive it as a dataset column.
PROMPT_MESSAGES_KEY = "prompt_messages"


@dataclass
class TrainerState:
    """Where training stands when a batch is scored (TRL passes its ``TrainerState`` the same way).

    Reward functions read ``trainer_state.global_step`` (optimizer steps done) and
    ``trainer_state.epoch`` for schedules that depend on training progress.
    """

    global_step: int = 0  # optimizer steps taken so far
    epoch: int = 0  # current epoch (0-based, whole epochs)
    max_steps: int = -1  # the trainer's step limit, -1 when none is set


@dataclass
class Samples:
    """N (prompt, completion) pairs to score.

    ``metadata[i]`` holds the dataset row's other columns for sample i (e.g. ``{"answer": "42"}``).
    ``group_index[i]`` is the prompt a sample belongs to (samples of one prompt share it).
    Token fields are optional: text-only rewards never need them. ``trainer_state`` is set by the
    trainer (None outside training). Prompts rendered from a chat carry it in
    ``metadata[i][PROMPT_MESSAGES_KEY]`` (see :attr:`prompt_messages`).
    """

    prompts: list[str]
    completions: list[str]
    completion_ids: Tensor | None = None  # (N, L)
    completion_mask: Tensor | None = None  # (N, L)
    group_index: Tensor | None = None  # (N,) long
    metadata: list[dict[str, Any]] = field(default_factory=list)
    trainer_state: TrainerState | None = None

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

    def select(self, index: Sequence[int]) -> Samples:
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
            trainer_state=self.trainer_state,
        )

    @staticmethod
    def concat(parts: Sequence[Samples]) -> Samples:
        """One batch of the rows of ``parts``, in order (token fields: all parts have them, of equal width, or
        none does; the trainer state of the first part)."""
        tokens = [p.completion_ids is not None for p in parts]
        if any(tokens) and not all(tokens):
            raise ValueError("Samples.concat: some parts carry completion_ids and some do not")

        def cat(name: str) -> Tensor | None:
            return torch.cat([getattr(p, name) for p in parts]) if all(tokens) and parts else None

        groups = [p.group_index for p in parts if p.group_index is not None]  # __post_init__ always sets it
        return Samples(prompts=[x for p in parts for x in p.prompts],
                       completions=[x for p in parts for x in p.completions],
                       completion_ids=cat("completion_ids"), completion_mask=cat("completion_mask"),
                       group_index=torch.cat(groups) if groups else None,
                       metadata=[m for p in parts for m in p.metadata],
                       trainer_state=parts[0].trainer_state if parts else None)

    @property
    def prompt_messages(self) -> list[list[dict[str, Any]] | None]:
        """Per sample, the chat its prompt was rendered from (None where the prompt was plain text)."""
        return [row.get(PROMPT_MESSAGES_KEY) for row in self.metadata]

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

    @staticmethod
    def scatter(n: int, parts: Iterable[tuple[Tensor, RewardOutput]]) -> RewardOutput:
        """One N-row output from sub-batch outputs: each ``(index, output)`` fills rows ``index`` of the rewards
        and of every metric; rows no part covers are NaN ("does not apply")."""
        rewards = torch.full((n,), math.nan)
        metrics: dict[str, Tensor] = {}
        for index, out in parts:
            rewards[index] = out.rewards.float()
            for key, value in out.metrics.items():
                metrics.setdefault(key, torch.full((n,), math.nan))[index] = value.float()
        return RewardOutput(rewards, metrics)
