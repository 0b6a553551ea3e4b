"""Test helpers for the reward layer (not a test module)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from reward_models import Reward, RewardOutput, Samples

nan = math.nan


def samples(completions: Sequence[str], metadata: Sequence[dict] | None = None, prompts: Sequence[str] | None = None,
            group_index: Sequence[int] | None = None) -> Samples:
    n = len(completions)
    return Samples(
        prompts=list(prompts) if prompts is not None else ["p"] * n,
        completions=list(completions),
        metadata=[dict(m) for m in metadata] if metadata is not None else [],
        group_index=None if group_index is None else torch.tensor(group_index),
    )


class Const(Reward):
    """Scores fixed values (NaN allowed), one per sample, counting the samples it is called with."""

    def __init__(self, values: list[float], metric: str | None = None) -> None:
        self.values = values
        self.metric = metric
        self.calls = 0
        self.scored = 0

    def forward(self, s: Samples) -> RewardOutput:
        self.calls += 1
        self.scored += len(s)
        idx = [int(m.get("i", k)) for k, m in enumerate(s.metadata)]
        r = torch.tensor([self.values[i] for i in idx], dtype=torch.float32)
        return RewardOutput(r, {self.metric: r * 10} if self.metric else {})


def indexed(n: int) -> Samples:
    """n samples whose metadata carries their index (so Const works after select())."""
    return samples([f"c{i}" for i in range(n)], [{"i": i} for i in range(n)])


def assert_close(actual: torch.Tensor, expected: Sequence[float], atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual.float(), torch.tensor(expected, dtype=torch.float32), atol=atol, rtol=0,
                               equal_nan=True)


def brevity(completions, target=None, **_):
    """A TRL-style reward function: -len(completion) (None where the row's target is None)."""
    targets = target if target is not None else [0] * len(completions)
    return [None if t is None else -float(len(c)) for c, t in zip(completions, targets, strict=True)]
