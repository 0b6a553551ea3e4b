"""Call a plain reward function exactly as TRL's ``GRPOTrainer`` calls it (used by ``FunctionReward``).

TRL calls every reward function as ``fn(prompts=..., completions=..., completion_ids=..., **columns,
trainer_state=..., log_extra=..., log_metric=...)`` where ``columns`` are the dataset row's other
columns as lists, ``completion_ids`` the generated token ids (padding removed, EOS kept) and, for
conversational data, prompts are message lists and each completion is
``[{"role": "assistant", "content": text}]``. It awaits ``async`` functions.
"""
from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reward_models.types import PROMPT_MESSAGES_KEY, Samples, TrainerState


@dataclass
class CallLog:
    """What a function reported during one call through ``log_metric`` / ``log_extra``."""

    metrics: dict[str, float] = field(default_factory=dict)
    extras: dict[str, list[Any]] = field(default_factory=dict)

    def log_metric(self, name: str, value: float) -> None:
        """TRL's ``log_metric(name, value)``: a scalar, logged as a per-sample metric of the node."""
        self.metrics[str(name)] = float(value)

    def log_extra(self, column: str, values: list[Any]) -> None:
        """TRL's ``log_extra(column, values)``: extra columns of TRL's completions table (kept, not logged)."""
        self.extras[str(column)] = list(values)


def is_conversational(samples: Samples, conversational: bool | None) -> bool:
    """``conversational`` if forced; otherwise whether any prompt was rendered from a chat."""
    if conversational is not None:
        return conversational
    return any(messages is not None for messages in samples.prompt_messages)


def function_prompts(samples: Samples, conversational: bool) -> list[Any]:
    """The ``prompts`` argument: message lists (a plain prompt becomes one user turn) or strings."""
    if not conversational:
        return list(samples.prompts)
    return [messages if messages is not None else [{"role": "user", "content": prompt}]
            for prompt, messages in zip(samples.prompts, samples.prompt_messages, strict=True)]


def function_completions(samples: Samples, conversational: bool) -> list[Any]:
    """The ``completions`` argument: ``[{"role": "assistant", "content": text}]`` per sample, or strings."""
    if not conversational:
        return list(samples.completions)
    return [[{"role": "assistant", "content": text}] for text in samples.completions]


def completion_id_lists(samples: Samples) -> list[list[int]] | None:
    """Token ids of each completion without padding (None when the samples carry no ids)."""
    if samples.completion_ids is None:
        return None
    ids = samples.completion_ids.cpu()
    if samples.completion_mask is None:
        return [row.tolist() for row in ids]
    mask = samples.completion_mask.cpu().bool()
    return [row[keep].tolist() for row, keep in zip(ids, mask, strict=True)]


def dataset_columns(samples: Samples) -> dict[str, list[Any]]:
    """Every metadata key as a list over the samples (``None`` where a row lacks it), TRL's ``**kwargs``."""
    names: dict[str, None] = {}
    for row in samples.metadata:
        names.update(dict.fromkeys(k for k in row if k != PROMPT_MESSAGES_KEY))
    return {name: [row.get(name) for row in samples.metadata] for name in names}


def call_arguments(samples: Samples, conversational: bool, log: CallLog) -> dict[str, Any]:
    """All keyword arguments TRL would pass for ``samples`` (before filtering by the signature); a dataset
    column named like one of the trainer's arguments (``prompts``, ``trainer_state``, ...) is shadowed."""
    return {
        **dataset_columns(samples),
        "prompts": function_prompts(samples, conversational),
        "completions": function_completions(samples, conversational),
        "completion_ids": completion_id_lists(samples),
        "trainer_state": samples.trainer_state if samples.trainer_state is not None else TrainerState(),
        "log_extra": log.log_extra,
        "log_metric": log.log_metric,
    }


def signature_names(fn: Callable[..., Any]) -> tuple[set[str], bool]:
    """The keyword names ``fn`` declares and whether it also takes ``**kwargs`` (then everything is passed).
    A callable without a readable signature (some builtins) is given everything."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return set(), True
    names = {
        p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def resolve(result: Any) -> Any:
    """``result`` itself, or, if it is awaitable (an ``async`` function's coroutine), its awaited value.

    Runs the coroutine with ``asyncio.run`` in this thread, or in a helper thread when this thread
    already runs an event loop (a reward scored from async code).
    """
    if not inspect.isawaitable(result):
        return result

    async def wait() -> Any:
        return await result

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = asyncio.run(wait())
        except BaseException as err:  # noqa: BLE001 - re-raised in the calling thread
            box["error"] = err

    worker = threading.Thread(target=run, name="reward-async")
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
