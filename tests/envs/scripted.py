"""A scripted environment for episode tests (importable by class_path)."""
from __future__ import annotations

import time

from lightning_trepo.envs import Environment, StepResult


class Scripted(Environment):
    """Answers ``obs<k>`` after turn k and ends after ``turns`` turns; records what it was shown. On the prompt
    ``bad`` it misbehaves as ``fault`` says (raise / non-text / hang / reset)."""

    def __init__(self, turns: int = 2, fault: str = "") -> None:
        self.turns, self.fault, self.seen, self.prompt = turns, fault, [], ""

    def reset(self, prompt, metadata):
        self.prompt, self.seen = prompt, []
        if prompt == "bad" and self.fault == "reset":
            raise RuntimeError("no such row")

    def step(self, action):
        self.seen.append(action)
        if self.prompt == "bad" and self.fault == "raise":
            raise RuntimeError("tool crashed")
        if self.prompt == "bad" and self.fault == "nontext":
            return StepResult(observation=123)  # type: ignore[arg-type]
        if self.prompt == "bad" and self.fault == "hang":
            time.sleep(5)
        k = len(self.seen)
        return StepResult(observation=f"obs{k}", done=k >= self.turns, reward=float(k))
