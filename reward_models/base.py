"""The Reward base class and FunctionReward.

A reward is a plain callable object, NOT an ``nn.Module``: reward trees never land in the policy's
optimizer or checkpoint weights by accident. Nodes that hold a model (learned RM, judge) move it
with :meth:`Reward.to`; nodes with state (running normalisation) expose it through
:meth:`Reward.state_dict`, which the trainer stores in its checkpoints.
"""
from __future__ import annotations

import importlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from reward_models import functions
from reward_models.types import RewardOutput, Samples

log = logging.getLogger("reward_models")
OnError = Literal["raise", "nan"]
"""What a node does when scoring raises: raise, or give NaN ("does not apply") for the samples it failed on."""
Missing = Literal["raise", "nan"]
"""What a node does when a sample lacks the metadata it needs: raise, or give NaN."""


def check_literal(owner: str, key: str, value: Any, literal: Any) -> Any:
    """``value`` if it is one of the ``Literal`` type's values, else a ``ValueError`` naming ``owner`` and ``key``."""
    allowed = [repr(v) for v in get_args(literal)]
    if value not in get_args(literal):
        listing = allowed[0] if len(allowed) == 1 else f"{', '.join(allowed[:-1])} or {allowed[-1]}"
        raise ValueError(f"{owner}: {key} must be {listing}, got {value!r}")
    return value


class RewardError(RuntimeError):
    """A reward component failed; ``path`` is its place in the tree (``("gated", "inner")``)."""

    def __init__(self, path: tuple[str, ...], component: str, message: str) -> None:
        self.path, self.component, self.message = path, component, message
        where = "/".join(path) if path else "<root>"
        super().__init__(f"reward component {where!r} ({component}) failed: {message}")

    def prefixed(self, name: str) -> RewardError:
        """The same error one level up the tree, under child name ``name``."""
        return RewardError((name, *self.path), self.component, self.message)


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

    #: Error policy of this node: ``"raise"`` (a :class:`RewardError` naming the component) or
    #: ``"nan"`` (NaN rewards for the batch plus a per-sample ``failed`` metric, 1 = failed).
    on_error: str = "raise"
    #: Wall-clock limit in seconds for one call of this node (None = no limit); a timeout is an error.
    timeout: float | None = None
    #: Leaves score identical (prompt, completion, metadata, token length) rows once per batch.
    deduplicate: bool = True
    #: Seconds the last call of this node took (read by ``score`` for per-component latency).
    last_latency_s: float = math.nan

    def component_name(self) -> str:
        """How errors and warnings name this node (its class name; ``FunctionReward`` adds the function)."""
        return type(self).__name__

    def set_policy(self, on_error: str = "raise", timeout: float | None = None) -> None:
        """Validate and set this node's error policy and timeout (called by subclasses' ``__init__``)."""
        check_literal(type(self).__name__, "on_error", on_error, OnError)
        if timeout is not None and not timeout > 0:
            raise ValueError(f"{type(self).__name__}: timeout must be > 0 seconds or None, got {timeout!r}")
        self.on_error, self.timeout = on_error, timeout

    def __call__(self, samples: Samples) -> RewardOutput:
        """Score ``samples``: dedup (leaves), timeout and error policy, shape checks, latency."""
        start = time.perf_counter()
        try:
            if self.deduplicate and not self.children() and len(samples) > 1:
                unique, inverse = dedup_index(samples)
                if len(unique) < len(samples):
                    out = self._guarded(samples.select(unique))
                    return RewardOutput(out.rewards[inverse], {k: v[inverse] for k, v in out.metrics.items()})
            return self._guarded(samples)
        finally:
            self.last_latency_s = time.perf_counter() - start

    def call_child(self, name: str, child: Reward, samples: Samples) -> RewardOutput:
        """Call ``child``; an error it raises is re-raised with ``name`` prepended to its path."""
        try:
            return child(samples)
        except RewardError as err:
            raise err.prefixed(name) from err.__cause__

    def _guarded(self, samples: Samples) -> RewardOutput:
        n = len(samples)
        try:
            out = self._forward_with_timeout(samples)
            check_output(out, n, self.component_name())
        except Exception as err:  # noqa: BLE001 - the policy decides; never silent
            if self.on_error == "nan":
                log.warning(
                    "reward component %s failed, scoring NaN: %s: %s", self.component_name(), type(err).__name__, err
                )
                return RewardOutput(torch.full((n,), math.nan), {"failed": torch.ones(n)})
            if isinstance(err, RewardError):
                raise
            raise RewardError((), self.component_name(), f"{type(err).__name__}: {err}") from err
        if self.on_error == "nan":
            out.metrics.setdefault("failed", torch.zeros(n))
        return out

    def _forward_with_timeout(self, samples: Samples) -> RewardOutput:
        if self.timeout is None:
            return self.forward(samples)
        # The worker thread cannot be killed: on timeout its result is abandoned (documented).
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"reward-{type(self).__name__}")
        try:
            return pool.submit(self.forward, samples).result(timeout=self.timeout)
        except FutureTimeout:
            raise TimeoutError(f"timed out after {self.timeout:g} s") from None
        finally:
            pool.shutdown(wait=False)

    def children(self) -> Mapping[str, Reward]:
        """Named child rewards (empty for leaves)."""
        return {}

    def to(self, device: torch.device | str) -> Reward:
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


def check_output(out: RewardOutput, n: int, component: str) -> None:
    """Raise if ``out`` is not (N,) rewards with (N,) metrics."""
    if not isinstance(out, RewardOutput):
        raise TypeError(f"reward component {component} returned {type(out).__name__}, expected RewardOutput")
    if out.rewards.shape != (n,):
        raise ValueError(f"reward component {component} returned shape {tuple(out.rewards.shape)}, expected ({n},)")
    infinite = torch.isinf(out.rewards).nonzero().flatten().tolist()
    if infinite:  # NaN means "does not apply"; an infinite reward would poison every advantage of its batch
        raise ValueError(f"reward component {component} returned infinite rewards at samples {infinite[:8]}")
    for key, value in out.metrics.items():
        if value.shape != (n,):
            raise ValueError(
                f"reward component {component} metric {key!r} has shape {tuple(value.shape)}, expected ({n},)"
            )


def dedup_index(samples: Samples) -> tuple[list[int], Tensor]:
    """First index of each distinct row and, for every row, the position of its row in that list.

    A row is (prompt, completion, metadata, token length); ``samples[unique][inverse] == samples``.
    """
    lengths = samples.lengths().tolist() if samples.completion_mask is not None else [None] * len(samples)
    first: dict[tuple[Any, ...], int] = {}
    unique: list[int] = []
    inverse: list[int] = []
    for i, (p, c, m, ln) in enumerate(
        zip(samples.prompts, samples.completions, samples.metadata, lengths, strict=True)
    ):
        key = (p, c, json.dumps(m, sort_keys=True, default=repr), ln)
        if key not in first:
            first[key] = len(unique)
            unique.append(i)
        inverse.append(first[key])
    return unique, torch.tensor(inverse, dtype=torch.long)


def as_reward_tensor(values: Tensor | list[float | None], n: int, component: str) -> Tensor:
    """Convert a leaf's output to an (N,) float32 tensor; ``None`` becomes NaN."""
    if isinstance(values, Tensor):
        out = values.detach().float().cpu().reshape(-1)
    else:
        vals = list(values)
        text = next((i for i, v in enumerate(vals) if isinstance(v, (str, bytes))), None)
        if text is not None:  # float("1.5") would pass silently: a scorer returning text is a bug
            raise TypeError(f"reward component {component} returned text {vals[text]!r:.40} at sample {text}; "
                            "expected numbers or None")
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
    """A plain Python reward function, given by import path, called exactly as TRL calls it.

    The function receives ``prompts``, ``completions``, ``completion_ids`` (token ids without
    padding, EOS kept; None when the samples carry no ids), every dataset column as a keyword list,
    ``trainer_state`` (:class:`~reward_models.types.TrainerState`: ``global_step``, ``epoch``,
    ``max_steps``), ``log_metric(name, value)`` and ``log_extra(column, values)``; a function without
    ``**kwargs`` receives only the names it declares. For conversational prompts (rendered with a chat
    template) prompts are message lists and each completion is
    ``[{"role": "assistant", "content": text}]``, as in TRL. It returns a list of floats (``None`` =
    does not apply, becomes NaN) or an (N,) tensor; an ``async`` function is awaited. Values given
    to ``log_metric`` become per-sample metrics of this node.
    """

    def __init__(
        self,
        fn: str,
        kwargs: dict[str, Any] | None = None,
        factory_args: dict[str, Any] | None = None,
        conversational: bool | None = None,
        on_error: str = "raise",
        timeout: float | None = None,
    ) -> None:
        """
        Args:
            fn: import path of the function, e.g. ``my_pkg.rewards.brevity`` or ``trl.rewards.think_format_reward``.
            kwargs: extra keyword arguments passed on every call (they override dataset columns).
            factory_args: when set, ``fn`` is a factory (``trl.rewards.get_soft_overlong_punishment``):
                it is called once with these keyword arguments and returns the reward function.
            conversational: pass prompts and completions as chat messages (True) or strings (False);
                None: messages when the prompts were rendered from a chat (TRL's rule).
            on_error: ``"raise"`` or ``"nan"`` (NaN + ``failed`` metric), see :class:`Reward`.
            timeout: seconds per call, None = no limit.
        """
        self.set_policy(on_error, timeout)
        self.fn_path, self.conversational = fn, conversational
        self.kwargs = dict(kwargs or {})
        self.factory_args = None if factory_args is None else dict(factory_args)
        self.fn: Callable[..., Any] = self._build(import_object(fn, "FunctionReward fn"))
        self._names, self._takes_any = functions.signature_names(self.fn)

    def component_name(self) -> str:
        return f"FunctionReward({self.fn_path})"

    def _build(self, target: Any) -> Callable[..., Any]:
        if self.factory_args is not None:
            if not callable(target):
                raise TypeError(f"FunctionReward fn {self.fn_path!r} is not callable (factory_args is set)")
            try:
                target = target(**self.factory_args)
            except Exception as err:  # noqa: BLE001 - re-raised naming the factory and its arguments
                raise ValueError(f"FunctionReward factory {self.fn_path!r} failed with factory_args="
                                 f"{self.factory_args}: {type(err).__name__}: {err}") from err
            if not callable(target):
                raise TypeError(
                    f"FunctionReward factory {self.fn_path!r} returned {type(target).__name__}, not a function"
                )
        elif not callable(target):
            raise TypeError(f"FunctionReward fn {self.fn_path!r} is not callable")
        return target

    def forward(self, samples: Samples) -> RewardOutput:
        log = functions.CallLog()
        call = functions.call_arguments(samples, functions.is_conversational(samples, self.conversational), log)
        call.update(self.kwargs)
        if "completion_ids" in self._names and call["completion_ids"] is None:
            raise ValueError(f"{self.fn_path} takes completion_ids but these samples carry no token ids")
        if not self._takes_any:
            call = {k: v for k, v in call.items() if k in self._names}
        values = functions.resolve(self.fn(**call))
        n = len(samples)
        metrics = {name: torch.full((n,), value) for name, value in log.metrics.items()}
        return RewardOutput(as_reward_tensor(values, n, self.component_name()), metrics)


MISSING: Any = object()


def metadata_value(samples: Samples, i: int, key: str, component: str, missing: str = "raise") -> Any:
    """``samples.metadata[i][key]``; if absent, raise naming component, key and row (``missing="raise"``)
    or return :data:`MISSING` (``missing="nan"``: the caller scores NaN, "does not apply")."""
    row = samples.metadata[i]
    if key in row and row[key] is not None:
        return row[key]
    if missing == "nan":
        return MISSING
    raise KeyError(f"{component}: metadata row {i} has no {key!r} (row keys: {sorted(row)})")


def score_by_reference(samples: Samples, key: str, component: str, missing: str,
                       judge: Callable[[int, str, Any], float]) -> list[float | None]:
    """``judge(i, completion, reference)`` for each sample, the reference being ``metadata[i][key]``
    (:func:`metadata_value`); None ("does not apply") where it is missing and ``missing="nan"``."""
    out: list[float | None] = []
    for i, completion in enumerate(samples.completions):
        ref = metadata_value(samples, i, key, component, missing)
        out.append(None if ref is MISSING else float(judge(i, completion, ref)))
    return out


def check_missing(owner: str, missing: str) -> str:
    return check_literal(owner, "missing", missing, Missing)
