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
            time.sleep(60)
        k = len(self.seen)
        return StepResult(observation=f"obs{k}", done=k >= self.turns, reward=float(k))


class KillingScripted(Scripted):
    """Scripted, but SIGKILLs its own process inside its ``kill_at``-th step call of the process (0 = never): a
    crash in the middle of an episode, while the other episodes of the batch are half played."""

    calls = 0

    def __init__(self, turns: int = 2, kill_at: int = 0) -> None:
        super().__init__(turns=turns)
        self.kill_at = kill_at

    def step(self, action):
        import os
        import signal

        KillingScripted.calls += 1
        if KillingScripted.calls == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().step(action)
