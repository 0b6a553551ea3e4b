"""Per-rollout metrics and the optional JSONL rollout log (re-scorable with `lightning-trepo score`)."""
from __future__ import annotations

import json
import math
import os
from typing import Any

import torch
from torch import Tensor

from lightning_trepo.types import Rollout


def group_zero_std_fraction(rewards: Tensor, group_size: int) -> Tensor:
    """Fraction of groups whose G rewards are all equal (they carry no GRPO/RLOO signal)."""
    if group_size < 2:
        return torch.tensor(0.0)
    grouped = rewards.reshape(-1, group_size)
    return (grouped.max(dim=1).values == grouped.min(dim=1).values).float().mean()


def rollout_metrics(rollout: Rollout, rewards: Tensor) -> dict[str, Tensor]:
    """Completion length mean/max, truncated fraction, zero-std group fraction."""
    lengths = rollout.lengths.float()
    finite = torch.nan_to_num(rewards, nan=0.0)
    return {
        "completion/length_mean": lengths.mean(),
        "completion/length_max": lengths.max(),
        "completion/truncated_frac": rollout.truncated.float().mean(),
        "reward/zero_std_group_frac": group_zero_std_fraction(finite.cpu(), rollout.group_size),
        "completion/tokens": rollout.completion_mask.sum().float(),
    }


def _nan_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    x = x.detach().float().cpu()
    ok = x[~torch.isnan(x)]
    if ok.numel() == 0:
        return torch.tensor(math.nan), torch.tensor(math.nan)
    std = ok.std(unbiased=False) if ok.numel() > 1 else torch.tensor(0.0)
    return ok.mean(), std


def reward_metrics(rewards: Tensor, components: dict[str, Tensor]) -> dict[str, Tensor]:
    """Mean and std of the total and of every node of the reward tree (NaN = not applicable, skipped)."""
    out: dict[str, Tensor] = {}
    for key, values in {"total": rewards, **components}.items():
        mean, std = _nan_stats(values)
        out[f"reward/{key}"] = mean
        out[f"reward/{key}_std"] = std
    out["reward/nan_frac"] = torch.isnan(rewards.detach().float()).float().mean().cpu()
    return out


class RolloutWriter:
    """Appends one JSON object per sample: step, prompt, completion, metadata, reward, components."""

    def __init__(self, path: str) -> None:
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)

    def write(self, step: int, rollout: Rollout, rewards: Tensor, components: dict[str, Tensor]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            for i in range(rollout.num_samples):
                row: dict[str, Any] = {
                    "step": int(step), "prompt": rollout.prompts[i], "completion": rollout.completions[i],
                    "metadata": rollout.metadata[i], "reward": _num(rewards[i]),
                    "components": {k: _num(v[i]) for k, v in components.items()},
                }
                fh.write(json.dumps(row, default=str) + "\n")


def _num(x: Tensor) -> float | None:
    v = float(x)
    return None if math.isnan(v) else v
