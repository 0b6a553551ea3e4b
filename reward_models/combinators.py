"""Combinators: Rewards that hold Rewards, so a YAML ``class_path``/``init_args`` tree is a reward graph.

Metric keys are hierarchical and relative to the node: a child named ``c`` contributes its
rewards under ``"c"`` and each of its own metrics ``k`` under ``"c/k"``. Children are named by the
``components`` mapping keys (WeightedSum, Product, Min, Max), ``"gate"`` / ``"inner"`` (Gate) or
``"inner"`` (single-child wrappers Clip, Affine, FillNaN, Normalize). :class:`Guard` is transparent: it adds
no level. A node's own total is the ``rewards`` its parent records under the node's name; the root's
total is ``RewardOutput.rewards`` itself.

NaN means "does not apply to this sample". Each combinator's docstring states its NaN policy.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from reward_models.base import OnError, Reward, check_literal
from reward_models.types import RewardOutput, Samples


def _check_components(owner: str, components: Mapping[str, Reward]) -> dict[str, Reward]:
    if not components:
        raise ValueError(f"{owner}: components must name at least one reward")
    for name, child in components.items():
        if not isinstance(child, Reward):
            raise TypeError(f"{owner}: component {name!r} is a {type(child).__name__}, not a Reward")
        if not name or "/" in name:
            raise ValueError(f"{owner}: component name {name!r} must be non-empty and contain no '/'")
    return dict(components)


def add_child_metrics(metrics: dict[str, Tensor], name: str, out: RewardOutput) -> None:
    """Record child ``name``'s rewards under ``name`` and its metrics under ``name/<key>``."""
    metrics[name] = out.rewards
    for key, value in out.metrics.items():
        metrics[f"{name}/{key}"] = value


def _run_children(node: Reward, samples: Samples) -> tuple[Tensor, dict[str, Tensor]]:
    """(K, N) stacked child rewards (in ``children()`` order) and the merged metrics."""
    metrics: dict[str, Tensor] = {}
    rows = []
    for name, child in node.children().items():
        out = node.call_child(name, child, samples)
        add_child_metrics(metrics, name, out)
        rows.append(out.rewards)
    return torch.stack(rows) if rows else torch.empty(0, len(samples)), metrics


class _Many(Reward):
    """Shared constructor of the elementwise K-ary combinators (not for direct use)."""

    deduplicate = False

    def __init__(self, components: Mapping[str, Reward]) -> None:
        self.components = _check_components(type(self).__name__, components)

    def children(self) -> Mapping[str, Reward]:
        return self.components

    def forward(self, samples: Samples) -> RewardOutput:
        stacked, metrics = _run_children(self, samples)
        return RewardOutput(self.reduce(stacked), metrics)

    def reduce(self, stacked: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def _all_nan(stacked: Tensor) -> Tensor:
    return torch.isnan(stacked).all(dim=0)


class WeightedSum(_Many):
    """``r = Σ_k w_k r_k`` over the components that apply (non-NaN); NaN only if none applies.

    NaN policy: a NaN component contributes nothing (as TRL's ``nansum``); a sample where every
    component is NaN gets NaN (so "nothing applied" stays visible instead of silently becoming 0).
    """

    def __init__(self, components: Mapping[str, Reward], weights: Mapping[str, float] | None = None) -> None:
        """
        Args:
            components: named child rewards; the names are the metric keys.
            weights: weight per component name; a missing weight is 1.0.
        """
        super().__init__(components)
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(self.components))
        if unknown:
            raise ValueError(
                f"WeightedSum: weights for unknown components {unknown}; components are {list(self.components)}"
            )
        self.weights = {name: float(weights.get(name, 1.0)) for name in self.components}

    def reduce(self, stacked: Tensor) -> Tensor:
        w = torch.tensor(list(self.weights.values()), dtype=stacked.dtype).unsqueeze(1)
        total = torch.nansum(w * stacked, dim=0)
        return torch.where(_all_nan(stacked), math.nan, total)


class Product(_Many):
    """``r = Π_k r_k`` over the components that apply; NaN only if none applies.

    NaN policy: a NaN component is skipped (treated as the multiplicative identity 1).
    """

    def reduce(self, stacked: Tensor) -> Tensor:
        total = torch.where(torch.isnan(stacked), 1.0, stacked).prod(dim=0)
        return torch.where(_all_nan(stacked), math.nan, total)


class Min(_Many):
    """``r = min_k r_k`` over the components that apply; NaN only if none applies."""

    def reduce(self, stacked: Tensor) -> Tensor:
        total = torch.where(torch.isnan(stacked), math.inf, stacked).amin(dim=0)
        return torch.where(_all_nan(stacked), math.nan, total)


class Max(_Many):
    """``r = max_k r_k`` over the components that apply; NaN only if none applies."""

    def reduce(self, stacked: Tensor) -> Tensor:
        total = torch.where(torch.isnan(stacked), -math.inf, stacked).amax(dim=0)
        return torch.where(_all_nan(stacked), math.nan, total)


class Gate(Reward):
    """``r = inner`` where ``gate ≥ threshold``, else ``otherwise``.

    E.g. correctness only counts if the format holds. Children are named ``"gate"`` and ``"inner"``.
    NaN policy: a NaN gate does not apply, so the sample is NOT gated (it gets ``inner``); a NaN
    inner on an open sample stays NaN; closed samples get ``otherwise`` whatever the inner says.
    With ``skip_closed=True`` the inner is scored only on open samples (saves an expensive judge);
    its metrics are then NaN on closed samples.
    """

    deduplicate = False

    def __init__(
        self,
        gate: Reward,
        inner: Reward,
        threshold: float = 0.5,
        otherwise: float = 0.0,
        skip_closed: bool = False,
    ) -> None:
        """
        Args:
            gate: the condition reward (e.g. a format check scoring 1/0).
            inner: the reward that counts where the gate is open.
            threshold: open where ``gate >= threshold``.
            otherwise: reward of closed samples.
            skip_closed: score ``inner`` only on open samples.
        """
        self.gate, self.inner = gate, inner
        self.threshold, self.otherwise, self.skip_closed = float(threshold), float(otherwise), skip_closed

    def children(self) -> Mapping[str, Reward]:
        return {"gate": self.gate, "inner": self.inner}

    def forward(self, samples: Samples) -> RewardOutput:
        metrics: dict[str, Tensor] = {}
        g = self.call_child("gate", self.gate, samples)
        add_child_metrics(metrics, "gate", g)
        open_ = torch.isnan(g.rewards) | (g.rewards >= self.threshold)
        inner = self._inner(samples, open_)
        add_child_metrics(metrics, "inner", inner)
        return RewardOutput(torch.where(open_, inner.rewards, self.otherwise), metrics)

    def _inner(self, samples: Samples, open_: Tensor) -> RewardOutput:
        if not self.skip_closed or bool(open_.all()):
            return self.call_child("inner", self.inner, samples)
        n = len(samples)
        idx = open_.nonzero().flatten()
        part = self.call_child("inner", self.inner, samples.select(idx.tolist()))
        return RewardOutput.scatter(n, [(idx, part)])


class _Wrapper(Reward):
    """Single-child node; the child is named ``"inner"`` (not for direct use)."""

    deduplicate = False

    def __init__(self, inner: Reward) -> None:
        if not isinstance(inner, Reward):
            raise TypeError(f"{type(self).__name__}: inner is a {type(inner).__name__}, not a Reward")
        self.inner = inner

    def children(self) -> Mapping[str, Reward]:
        return {"inner": self.inner}

    def forward(self, samples: Samples) -> RewardOutput:
        out = self.call_child("inner", self.inner, samples)
        metrics: dict[str, Tensor] = {}
        add_child_metrics(metrics, "inner", out)
        return RewardOutput(self.transform(out.rewards, samples), metrics)

    def transform(self, r: Tensor, samples: Samples) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class Clip(_Wrapper):
    """``r = min(max(inner, low), high)`` (a None bound is not applied). NaN stays NaN."""

    def __init__(self, inner: Reward, low: float | None = None, high: float | None = None) -> None:
        super().__init__(inner)
        if low is not None and high is not None and low > high:
            raise ValueError(f"Clip: low={low} > high={high}")
        self.low, self.high = low, high

    def transform(self, r: Tensor, samples: Samples) -> Tensor:
        return torch.clamp(r, min=self.low, max=self.high)


class Affine(_Wrapper):
    """``r = scale · inner + shift``. NaN stays NaN."""

    def __init__(self, inner: Reward, scale: float = 1.0, shift: float = 0.0) -> None:
        super().__init__(inner)
        self.scale, self.shift = float(scale), float(shift)

    def transform(self, r: Tensor, samples: Samples) -> Tensor:
        return self.scale * r + self.shift


class FillNaN(_Wrapper):
    """``r = inner`` where it applies, ``value`` where it is NaN (e.g. at the root, so the trainer
    gets NaN-free rewards). The NaN rate stays visible in the ``inner`` metric."""

    def __init__(self, inner: Reward, value: float = 0.0) -> None:
        super().__init__(inner)
        self.value = float(value)

    def transform(self, r: Tensor, samples: Samples) -> Tensor:
        return torch.where(torch.isnan(r), self.value, r)


NormalizeMode = Literal["batch", "group", "running"]


class Normalize(_Wrapper):
    """Standardise the inner reward: ``r = (inner − μ) / (σ + eps)`` (``center=False``: ``inner / (σ + eps)``).

    ``mode`` chooses μ and σ (population std, ``σ² = mean((x − μ)²)``):
    ``"batch"``: over the batch; ``"group"``: over the samples sharing ``Samples.group_index``
    (samples of one prompt; a group of one gets 0); ``"running"``: over every value seen so far
    (this batch included), merged with Chan's parallel update; that state is in ``state_dict()``.
    NaN policy: NaN values are left out of the statistics and stay NaN.
    """

    def __init__(
        self,
        inner: Reward,
        mode: NormalizeMode = "batch",
        eps: float = 1e-6,
        center: bool = True,
    ) -> None:
        """
        Args:
            inner: the reward to normalise.
            mode: ``"batch"``, ``"group"`` or ``"running"`` statistics.
            eps: added to σ.
            center: subtract μ (False: only divide by σ + eps).
        """
        super().__init__(inner)
        check_literal("Normalize", "mode", mode, NormalizeMode)
        self.mode, self.eps, self.center = mode, float(eps), center
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def transform(self, r: Tensor, samples: Samples) -> Tensor:
        if self.mode == "batch":
            mean, std = nan_mean_std(r)
        elif self.mode == "group":
            mean, std = torch.zeros_like(r), torch.zeros_like(r)
            groups = samples.group_index if samples.group_index is not None else torch.arange(len(r))
            for g in torch.unique(groups):
                sel = groups == g
                mean[sel], std[sel] = nan_mean_std(r[sel])
        else:
            self._update(r)
            mean = torch.tensor(self.mean, dtype=r.dtype)
            std = torch.tensor(math.sqrt(self.m2 / self.count) if self.count else 0.0, dtype=r.dtype)
        return ((r - mean) if self.center else r) / (std + self.eps)

    def _update(self, r: Tensor) -> None:
        """Chan et al.: ``δ = μ_b − μ``, ``n = n_a + n_b``, ``μ += δ n_b / n``, ``M2 += M2_b + δ² n_a n_b / n``."""
        x = r[~torch.isnan(r)].double()
        n_b = x.numel()
        if n_b == 0:
            return
        mean_b = float(x.mean())
        m2_b = float(((x - mean_b) ** 2).sum())
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.count * n_b / n
        self.count = n

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.mode == "running":
            state.update(count=self.count, mean=self.mean, m2=self.m2)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if self.mode == "running" and "count" in state:
            self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])


def nan_mean_std(r: Tensor, empty: float = 0.0) -> tuple[Tensor, Tensor]:
    """Mean and population std (σ² = mean((x − μ)²)) of the non-NaN entries; ``empty`` for both if there are none.
    The one NaN-aware mean/std of the project: Normalize uses it, and so does the trainer's reward logging."""
    x = r[~torch.isnan(r)]
    if x.numel() == 0:
        return torch.tensor(empty), torch.tensor(empty)
    mean = x.mean()
    return mean, ((x - mean) ** 2).mean().sqrt()


class Guard(_Wrapper):
    """Give ``inner`` an error policy and a timeout. Transparent: its rewards and metrics are the
    inner's own (plus ``failed``), with no ``inner`` level.

    ``on_error="nan"``: any error or timeout in the subtree gives NaN for the batch and
    ``failed = 1`` (``failed = 0`` on success); ``"raise"``: a :class:`RewardError` naming the component.
    """

    def __init__(self, inner: Reward, on_error: OnError = "nan", timeout: float | None = None) -> None:
        super().__init__(inner)
        self.set_policy(on_error, timeout)

    def forward(self, samples: Samples) -> RewardOutput:
        out = self.inner(samples)
        return RewardOutput(out.rewards, dict(out.metrics))
