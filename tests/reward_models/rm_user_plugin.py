"""A user's own reward, in the user's own module: plugs in by class_path, no project change."""
from __future__ import annotations

from reward_models import Reward, Samples


class KeywordBonus(Reward):
    """``bonus`` per occurrence of ``keyword`` in the completion, at most ``cap``."""

    def __init__(self, keyword: str, bonus: float = 0.1, cap: float = 1.0) -> None:
        self.keyword, self.bonus, self.cap = keyword, bonus, cap

    def score(self, samples: Samples) -> list[float]:
        return [min(self.cap, self.bonus * c.count(self.keyword)) for c in samples.completions]
