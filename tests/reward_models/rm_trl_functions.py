"""User-style TRL reward functions for the FunctionReward tests (importable by path, not a test module)."""
from __future__ import annotations

import asyncio

CALLS: list[dict] = []  # every call of `record`: the keyword arguments it received


def record(prompts, completions, completion_ids, trainer_state, **kwargs):
    """Records what it was given; scores len(completion_ids[i]) + global_step."""
    CALLS.append({"prompts": prompts, "completions": completions, "completion_ids": completion_ids,
                  "trainer_state": trainer_state, **kwargs})
    return [float(len(ids) + trainer_state.global_step) for ids in completion_ids]


def warmup_weighted(completions, trainer_state, warmup_steps=10):
    """No **kwargs: 1.0 per completion scaled by min(1, step / warmup_steps) (a curriculum weight)."""
    weight = min(1.0, trainer_state.global_step / warmup_steps)
    return [weight] * len(completions)


def with_metric(completions, log_metric, **kwargs):
    """Scores 1.0 and logs how many completions it saw."""
    log_metric("seen", len(completions))
    return [1.0] * len(completions)


async def async_length(completions, **kwargs):
    """An async reward: awaits a sleep, then scores the character length of each completion."""
    await asyncio.sleep(0)
    return [float(len(c)) for c in completions]


class AsyncCallable:
    """A callable class whose __call__ is async (TRL's `is_async_callable` form)."""

    async def __call__(self, completions, **kwargs):
        await asyncio.sleep(0)
        return [-1.0] * len(completions)


def make_async_callable():
    """A factory returning an async callable."""
    return AsyncCallable()


def not_a_function_factory():
    return 42
