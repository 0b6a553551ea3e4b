"""The environment interface of multi-turn episodes: text in, text out.

An episode is the policy's turns interleaved with the environment's answers, all under one
response-level reward (the Trajectory Policy Gradient Theorem is about whole trajectories; the
environment is part of the transition, its tokens are never trained on). The episode loop
(:mod:`lightning_trepo.rollout.episodes`) calls, for every episode:

1. ``env = environment.spawn()`` (a fresh copy: environments keep per-episode state),
2. ``env.reset(prompt, metadata)`` with the dataset row,
3. ``env.step(turn_text)`` after each model turn -> :class:`StepResult` (the observation text the next
   turn sees, whether the episode is over, optionally a reward).

A user's own environment subclasses :class:`Environment` in their own module and plugs in by
``class_path`` (typed ``__init__``: the YAML schema).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any


class EnvError(RuntimeError):
    """An environment failed on one episode (raised, returned something that is not a StepResult with text,
    or timed out): the message names the environment and the episode; the episode's row is dropped, not the batch."""


@dataclass
class StepResult:
    """What an environment answers to one model turn."""

    observation: str = ""
    """Text appended to the episode for the next turn (formatted by ``rollout.episode.observation_template``);
    ignored when ``done``."""
    done: bool = False
    """The episode is over (the model gave its final answer, or the environment ends it)."""
    reward: float | None = None
    """Optional reward of the episode so far; the last one given is the episode's ``env_reward`` (metadata), which a
    reward tree reads with ``FunctionReward("lightning_trepo.envs.env_reward")``; None = the environment gives none."""


class Environment:
    """Base class of text environments. Override :meth:`step` (and :meth:`reset` to read the dataset row)."""

    name: str = ""
    """Name used in errors and metrics (default: the class name)."""

    def spawn(self) -> Environment:
        """A fresh environment for one episode (default: a deep copy of this configured one)."""
        return copy.deepcopy(self)

    def reset(self, prompt: str, metadata: dict[str, Any]) -> None:
        """Start an episode on the dataset row (the prompt text the policy saw and the row's other columns)."""

    def step(self, action: str) -> StepResult:
        """Answer one model turn (its decoded text, special tokens stripped)."""
        raise NotImplementedError(f"{type(self).__name__}.step")

    def close(self) -> None:
        """Release what the episode held (called once per episode, also after a failure)."""

    @property
    def label(self) -> str:
        return self.name or type(self).__name__


def check_step_result(result: Any, env: str, episode: int) -> StepResult:
    """Refuse anything but a StepResult whose observation is text (the error names the environment and episode)."""
    if not isinstance(result, StepResult):
        raise EnvError(f"environment {env} (episode {episode}): step() returned {type(result).__name__}, "
                       "expected a lightning_trepo.envs.StepResult")
    if not isinstance(result.observation, str):
        raise EnvError(f"environment {env} (episode {episode}): step() returned an observation of type "
                       f"{type(result.observation).__name__}, expected text (str)")
    if result.reward is not None and not isinstance(result.reward, (int, float)):
        raise EnvError(f"environment {env} (episode {episode}): step() returned a reward of type "
                       f"{type(result.reward).__name__}, expected a number or None")
    return result


def env_reward(completions: list[str], env_reward: list[float | None] | None = None, **_: object) -> list[float | None]:
    """The environment's reward of each episode (``metadata["env_reward"]``) as a reward function:
    ``FunctionReward("lightning_trepo.envs.env_reward")``; None (NaN: does not apply) where it gave none."""
    values = env_reward if env_reward is not None else [None] * len(completions)
    return [None if v is None else float(v) for v in values]
