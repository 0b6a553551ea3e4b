"""Per-rollout metrics and the optional JSONL rollout log (re-scorable with `lightning-trepo score`)."""
from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import Tensor

from lightning_trepo.types import Rollout
from reward_models.combinators import nan_mean_std
from reward_models.rollouts import write_rollouts
from reward_models.types import RewardOutput


def group_zero_std_fraction(rewards: Tensor, group_size: int) -> Tensor:
    """Fraction of groups whose G rewards are all equal (they carry no GRPO/RLOO signal)."""
    if group_size < 2:
        return torch.tensor(0.0)
    grouped = rewards.reshape(-1, group_size)
    return (grouped.max(dim=1).values == grouped.min(dim=1).values).float().mean()


def rollout_metrics(rollout: Rollout, rewards: Tensor) -> dict[str, Tensor]:
    """Completion length mean/max, truncated fraction, zero-std group fraction."""
    lengths = rollout.trained_mask.sum(-1).float()  # generated tokens (an episode's environment tokens excluded)
    finite = torch.nan_to_num(rewards, nan=0.0)
    return {
        "completion/length_mean": lengths.mean(),
        "completion/length_max": lengths.max(),
        "completion/truncated_frac": rollout.truncated.float().mean(),
        "reward/zero_std_group_frac": group_zero_std_fraction(finite.cpu(), rollout.group_size),
        "completion/tokens": rollout.trained_mask.sum().float(),
    }


def episode_metrics(rollout: Rollout) -> dict[str, Tensor]:
    """Multi-turn rollouts only: model turns per episode, environment tokens, failed episodes' share."""
    if rollout.loss_mask is None:
        return {}
    turns = torch.tensor([float(m.get("episode_turns", 0)) for m in rollout.metadata])
    failed = torch.tensor([float("episode_error" in m) for m in rollout.metadata])
    env_tokens = (rollout.completion_mask.bool() & ~rollout.loss_mask.bool()).sum().float().cpu()
    return {"episode/turns_mean": turns.mean(), "episode/env_tokens": env_tokens, "episode/failed_frac": failed.mean()}


def step_metrics(rollout: Rollout, rewards: Tensor, components: dict[str, Tensor],
                 generate_calls: int) -> dict[str, Tensor]:
    """What every training rollout logs besides its algorithm's own metrics: lengths, rewards per reward-tree node,
    seconds per phase (``rollout.timings``), generate calls and generated tokens per second."""
    seconds = rollout.timings
    return {**rollout_metrics(rollout, rewards), **episode_metrics(rollout), **reward_metrics(rewards, components),
            **{f"time/{phase}": torch.tensor(seconds[phase]) for phase in ("generate", "score", "logprobs")},
            "rollout/generate_calls": torch.tensor(float(generate_calls)),
            "perf/tokens_per_s": torch.tensor(float(rollout.trained_mask.sum()) / max(seconds["generate"], 1e-9))}


@contextmanager
def timed(seconds: dict[str, float], phase: str) -> Iterator[None]:
    """Add the wall-clock seconds of the ``with`` body to ``seconds[phase]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - start


def reward_metrics(rewards: Tensor, components: dict[str, Tensor]) -> dict[str, Tensor]:
    """Mean and std of the total and of every node of the reward tree (NaN = not applicable, skipped)."""
    out: dict[str, Tensor] = {}
    for key, values in {"total": rewards, **components}.items():
        mean, std = nan_mean_std(values.detach().float().cpu(), empty=math.nan)  # NaN: no node applied
        out[f"reward/{key}"] = mean
        out[f"reward/{key}_std"] = std
    out["reward/nan_frac"] = torch.isnan(rewards.detach().float()).float().mean().cpu()
    return out


class RolloutWriter:
    """Appends one JSON row per sample with :func:`reward_models.rollouts.write_rollouts` (re-scorable with
    ``lightning-trepo score``): prompt, completion, metadata, completion_ids, group_index (unique across
    steps), reward and per-node metrics, plus the training step."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._groups_written = 0

    def write(self, step: int, rollout: Rollout, rewards: Tensor, components: dict[str, Tensor]) -> None:
        group_index = rollout.group_index.cpu() + self._groups_written
        self._groups_written += int(rollout.group_index.max()) + 1 if rollout.num_samples else 0
        samples = replace(rollout.to_samples(), group_index=group_index)
        per_sample = {k: v.detach().cpu() for k, v in components.items() if v.dim() and v.shape[0] == len(samples)}
        output = RewardOutput(rewards=rewards.detach().cpu(), metrics=per_sample)
        write_rollouts(self.path, samples, output, step=step)
