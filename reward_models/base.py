"""The Reward base class and FunctionReward.

A reward is a plain callable object, NOT an ``nn.Module``: reward trees never land in the policy's
optimizer or checkpoint weights by accident. Nodes that hold a model (learned RM, judge) move it
with :meth:`Reward.to`; nodes with state (running normalisation) expose it through
:meth:`Reward.state_dict`, which the trainer stores in its checkpoints.
"""
from __future__ import annotations

import importlib
import inspect
import math
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from reward_models.types import RewardOutput, Samples


class Reward:
    """Base class of every reward node. Subclasses implement :meth:`forward`.

    Leaves usually implement :meth:`score` instead (returning an (N,) tensor or list of floats /
    None) and inherit ``forward``. Composite nodes hold their children in :meth:`children`.
    """

    def forward(self, samples: Samples) -> RewardOutput:
        scores = self.score(samples)
        return RewardOutput(rewards=as_reward_tensor(scores, len(samples), type(self).__name__))

    def score(self, samples: Samples) -> Tensor | list[float | None]:
        raise NotImplementedError(f"{type(self).__name__} must implement forward() or score()")

    def __call__(self, samples: Samples) -> RewardOutput:
        out = self.forward(samples)
        if out.rewards.shape != (len(samples),):
            raise ValueError(
                f"reward component {type(self).__name__} returned shape {tuple(out.rewards.shape)}, "
                f"expected ({len(samples)},)"
            )
        return out

    def children(self) -> Mapping[str, "Reward"]:
        """Named child rewards (empty for leaves)."""
        return {}

    def to(self, device: torch.device | str) -> "Reward":
        """Move any model this node holds (and its children's) to ``device``."""
        for child in self.children().values():
            child.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        """Mutable state (e.g. running statistics) of this node and its children."""
        return {name: child.state_dict() for name, child in self.children().items() if child.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, child in self.children().items():
            if name in state:
                child.load_state_dict(state[name])


def as_reward_tensor(values: Tensor | list[float | None], n: int, component: str) -> Tensor:
    """Convert a leaf's output to an (N,) float32 tensor; ``None`` becomes NaN."""
    if isinstance(values, Tensor):
        out = values.detach().float().cpu().reshape(-1)
    else:
        vals = list(values)
        out = torch.tensor([math.nan if v is None else float(v) for v in vals], dtype=torch.float32)
    if out.numel() != n:
        raise ValueError(f"reward component {component} returned {out.numel()} values for {n} samples")
    return out


def import_object(path: str, what: str = "object") -> Any:
    """Import ``package.module.name`` (or ``package.module:name``) with an error naming the path."""
    module_name, sep, attr = path.replace(":", ".").rpartition(".")
    if not sep or not module_name:
        raise ValueError(f"{what} {path!r} is not an import path like 'package.module.function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"{what} {path!r}: cannot import module {module_name!r} ({err})") from err
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise ImportError(f"{what} {path!r}: module {module_name!r} has no attribute {attr!r}") from err


class FunctionReward(Reward):
    """Wrap a plain Python function, TRL-style, given by import path.

    The function is called as ``fn(prompts=..., completions=..., **columns, **kwargs)`` where
    ``columns`` are the metadata keys as lists (TRL's convention), and returns a list of floats
    (``None`` = does not apply, becomes NaN) or an (N,) tensor.
    """

    def __init__(self, fn: str, kwargs: dict[str, Any] | None = None) -> None:
        """
        Args:
            fn: import path of the function, e.g. ``my_pkg.rewards.brevity``.
            kwargs: extra keyword arguments passed on every call.
        """
        self.fn_path = fn
        self.fn: Callable[..., Any] = import_object(fn, "FunctionReward fn")
        if not callable(self.fn):
            raise TypeError(f"FunctionReward fn {fn!r} is not callable")
        self.kwargs = dict(kwargs or {})
        params = inspect.signature(self.fn).parameters.values()
        self._accepts_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        self._names = {p.name for p in inspect.signature(self.fn).parameters.values()}

    def score(self, samples: Samples) -> Tensor | list[float | None]:
        columns: dict[str, list[Any]] = {}
        for row in samples.metadata:
            for key in row:
                columns.setdefault(key, [])
        for key in columns:
            columns[key] = [row.get(key) for row in samples.metadata]
        call: dict[str, Any] = {"prompts": samples.prompts, "completions": samples.completions, **columns, **self.kwargs}
        if not self._accepts_var_kw:
            call = {k: v for k, v in call.items() if k in self._names}
        return self.fn(**call)
