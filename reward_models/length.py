"""Length and repetition penalties (scores ≤ 0).

L is the completion length in tokens when ``Samples.completion_mask`` is present (what the policy
generated), else in characters. They need no metadata, so they never score NaN; an empty completion
has L = 0 and no n-grams, so every penalty here is 0 for it.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from reward_models.base import Reward, check_literal
from reward_models.types import Samples


class LengthPenalty(Reward):
    """Linear length penalty ``r = −scale · max(0, L − free_length)``, floored at ``−max_penalty``."""

    def __init__(self, scale: float = 0.001, free_length: int = 0, max_penalty: float | None = None) -> None:
        """
        Args:
            scale: penalty per unit of length beyond ``free_length``.
            free_length: length that costs nothing.
            max_penalty: cap on the penalty's magnitude (None = uncapped).
        """
        if scale < 0 or free_length < 0 or (max_penalty is not None and max_penalty < 0):
            raise ValueError("LengthPenalty: scale, free_length and max_penalty must be >= 0")
        self.scale, self.free_length, self.max_penalty = float(scale), int(free_length), max_penalty

    def score(self, samples: Samples) -> Tensor:
        r = -self.scale * (samples.lengths() - self.free_length).clamp(min=0)
        return r if self.max_penalty is None else r.clamp(min=-self.max_penalty)


class OverlongPenalty(Reward):
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv 2503.14476, eq. 13), with
    ``L_max = max_length``, ``L_cache = buffer_length``, ``f = penalty_factor``::

        r = 0                                   if L ≤ L_max − L_cache
        r = f · ((L_max − L_cache) − L) / L_cache  if L_max − L_cache < L ≤ L_max
        r = −f                                  if L > L_max
    """

    def __init__(self, max_length: int, buffer_length: int, penalty_factor: float = 1.0) -> None:
        if not 0 < buffer_length <= max_length:
            raise ValueError(
                f"OverlongPenalty: need 0 < buffer_length <= max_length, got {buffer_length}, {max_length}"
            )
        self.max_length, self.buffer_length, self.penalty_factor = (
            int(max_length),
            int(buffer_length),
            float(penalty_factor),
        )

    def score(self, samples: Samples) -> Tensor:
        length = samples.lengths()
        start = self.max_length - self.buffer_length
        ramp = (start - length) / self.buffer_length
        r = torch.where(length <= start, torch.zeros_like(length), ramp)
        return self.penalty_factor * torch.where(length > self.max_length, -torch.ones_like(length), r)


RepetitionUnit = Literal["auto", "token", "word", "char"]


class RepetitionPenalty(Reward):
    """n-gram repetition penalty ``r = −scale · (1 − distinct / total)`` over the completion's n-grams.

    Units: ``"token"`` ids (needs ``completion_ids``), ``"word"`` (whitespace split), ``"char"``;
    ``"auto"`` uses tokens when ids are present, else words. Fewer than n units: r = 0.
    """

    def __init__(self, n: int = 3, scale: float = 1.0, unit: RepetitionUnit = "auto") -> None:
        if n < 1:
            raise ValueError(f"RepetitionPenalty: n must be >= 1, got {n}")
        check_literal("RepetitionPenalty", "unit", unit, RepetitionUnit)
        self.n, self.scale, self.unit = int(n), float(scale), unit

    def _units(self, samples: Samples) -> list[list[str]] | list[list[int]]:
        unit = self.unit
        if unit == "auto":
            unit = "token" if samples.completion_ids is not None else "word"
        if unit == "word":
            return [c.split() for c in samples.completions]
        if unit == "char":
            return [list(c) for c in samples.completions]
        if samples.completion_ids is None:
            raise ValueError("RepetitionPenalty: unit='token' needs Samples.completion_ids")
        ids = samples.completion_ids
        mask = samples.completion_mask if samples.completion_mask is not None else torch.ones_like(ids)
        return [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]

    def score(self, samples: Samples) -> list[float]:
        out = []
        for units in self._units(samples):
            grams = [tuple(units[i : i + self.n]) for i in range(len(units) - self.n + 1)]
            out.append(-self.scale * (1 - len(set(grams)) / len(grams)) if grams else 0.0)
        return out
