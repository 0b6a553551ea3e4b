"""Environments users already have: the gymnasium API with text observations and text actions.

Why gymnasium and not ``verifiers``: a gymnasium text environment is a plain object with
``reset(seed=, options=) -> (obs, info)`` and ``step(action) -> (obs, reward, terminated, truncated, info)``,
which runs offline, in-process, with no dependency (this adapter is duck-typed, gymnasium itself need not be
installed). ``verifiers`` environments drive an OpenAI-compatible client through their own async rollout loop
(and pull in ``openai`` and ``datasets``); they own the generation, which is exactly what the episode loop must own
to keep the sampled token ids. The gymnasium step rewards add up to the episode's ``env_reward`` (γ = 1: the
response-level reward as a sum of per-step rewards, the paper's assumption).
"""
from __future__ import annotations

import importlib
from typing import Any

from lightning_trepo.envs.base import Environment, StepResult


def _import(path: str) -> Any:
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise ValueError(f"GymTextEnv.factory {path!r}: expected 'package.module:callable'")
    return getattr(importlib.import_module(module), attr)


class GymTextEnv(Environment):
    """A gymnasium-API text environment, built per episode by ``factory`` (``module:callable``, called with
    ``kwargs``) or ``gymnasium.make(env_id, **kwargs)``. The prompt the policy saw is the first observation; the
    row's ``seed`` column (if any) seeds ``reset``; the row itself goes in ``options``."""

    def __init__(self, factory: str | None = None, env_id: str | None = None, kwargs: dict[str, Any] | None = None,
                 name: str = "") -> None:
        """
        Args:
            factory: import path of a callable returning the environment.
            env_id: a registered gymnasium id (used when ``factory`` is None; needs gymnasium installed).
            kwargs: keyword arguments of the factory / ``gymnasium.make``.
            name: name in errors and metrics (default: the factory or the id).
        """
        if (factory is None) == (env_id is None):
            raise ValueError("GymTextEnv: give exactly one of factory (module:callable) or env_id (gymnasium id)")
        self.factory, self.env_id, self.kwargs = factory, env_id, dict(kwargs or {})
        self.name = name or factory or env_id or ""
        self._env: Any = None
        self.total_reward = 0.0

    def _make(self) -> Any:
        if self.factory is not None:
            return _import(self.factory)(**self.kwargs)
        import gymnasium  # noqa: PLC0415  # pyright: ignore[reportMissingImports] - optional, only for env_id

        return gymnasium.make(self.env_id, **self.kwargs)

    def spawn(self) -> GymTextEnv:
        return GymTextEnv(self.factory, self.env_id, self.kwargs, self.name)

    def reset(self, prompt: str, metadata: dict[str, Any]) -> None:
        self._env = self._make()
        seed = metadata.get("seed")
        self._env.reset(seed=int(seed) if seed is not None else None, options=dict(metadata))
        self.total_reward = 0.0

    def step(self, action: str) -> StepResult:
        observation, reward, terminated, truncated, _ = self._env.step(action)
        self.total_reward += float(reward)
        done = bool(terminated or truncated)
        return StepResult(observation="" if done and observation is None else observation, done=done,
                          reward=self.total_reward)

    def close(self) -> None:
        if self._env is not None and hasattr(self._env, "close"):
            self._env.close()
