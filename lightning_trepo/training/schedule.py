"""Learning-rate schedule with warmup, set from YAML by the top-level ``lr_scheduler:`` key of a fit config::

    lr_scheduler:
      warmup_steps: 10      # linear warmup from 0 over the first 10 optimizer steps
      decay: cosine         # then constant | linear | cosine down to min_lr_ratio x lr at total_steps
      min_lr_ratio: 0.1

It multiplies whatever learning rate(s) the module's ``optimizer`` factory set (PPO's separate value lr too) and
steps once per optimizer step; the scheduler state is saved in checkpoints, so a resumed run continues it.
``total_tokens`` measures the decay in generated training tokens instead of optimizer steps (the module's
``trained_tokens``: responses, TRePO's continuations, ReMax's baselines, summed over ranks, checkpointed), so
algorithms that spend different tokens a step anneal alike per token::

    lr_scheduler: {decay: cosine, min_lr_ratio: 0.1, total_tokens: 70000}
The factor follows transformers' ``get_{constant,linear,cosine}_schedule_with_warmup`` (step 0 of a warmup runs at
lr 0), with a floor ``min_lr_ratio``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import MethodType
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule

from lightning_trepo.errors import check_choice

Decay = Literal["constant", "linear", "cosine"]


@dataclass
class LRScheduleConfig:
    """Warmup then decay of every parameter group's learning rate, per optimizer step."""

    warmup_steps: int = 0
    """Optimizer steps of linear warmup from 0 to the optimizer's lr."""
    decay: Decay = "constant"
    """After warmup: keep the lr, or decay it linearly / along a half cosine until ``total_steps``."""
    min_lr_ratio: float = 0.0
    """Decay floor as a fraction of the optimizer's lr."""
    total_steps: int | None = None
    """Where the decay ends; None = the trainer's ``max_steps`` (its estimated optimizer steps)."""
    total_tokens: int | None = None
    """Where the decay ends in generated training tokens (the module's ``trained_tokens``); set, it replaces
    ``total_steps`` and the decay's progress is ``tokens / total_tokens`` (warmup still counts optimizer steps)."""

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ValueError(f"lr_scheduler.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"lr_scheduler.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        check_choice("decay", self.decay, Decay, section="lr_scheduler")
        if self.total_tokens is not None and self.total_tokens <= 0:
            raise ValueError(f"lr_scheduler.total_tokens must be > 0, got {self.total_tokens}")


def lr_factor(step: int, cfg: LRScheduleConfig, total_steps: int, tokens: int = 0) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based), after ``tokens`` generated training tokens:
    ``step / warmup`` during warmup, then ``m + (1 - m) * d(p)`` with ``p = (step - warmup) / (total - warmup)``
    (or ``p = tokens / total_tokens`` when ``cfg.total_tokens`` is set) clipped to [0, 1] and ``d(p) = 1``
    (constant), ``1 - p`` (linear) or ``(1 + cos(pi p)) / 2`` (cosine)."""
    if step < cfg.warmup_steps:
        return step / cfg.warmup_steps
    if cfg.decay == "constant":
        return 1.0
    if cfg.total_tokens is not None:
        progress = min(1.0, tokens / cfg.total_tokens)
    else:
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    shape = 1.0 - progress if cfg.decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


def attach_lr_schedule(module: LightningModule, cfg: LRScheduleConfig) -> None:
    """Wrap ``module.configure_optimizers`` so the optimizer it returns comes with a per-step ``LambdaLR``
    (as LightningCLI itself does for its own ``optimizer``/``lr_scheduler`` keys)."""
    configure = module.configure_optimizers

    def configure_optimizers(self: LightningModule) -> dict[str, Any]:
        optimizer = configure()
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"lr_scheduler: {type(self).__name__}.configure_optimizers returned a "
                            f"{type(optimizer).__name__}, expected one torch.optim.Optimizer")
        total = cfg.total_steps or int(self.trainer.estimated_stepping_batches)
        if cfg.total_tokens is not None and not hasattr(self, "trained_tokens"):
            raise TypeError(f"lr_scheduler.total_tokens: {type(self).__name__} does not count its generated tokens "
                            "(trained_tokens); use total_steps")
        if cfg.decay != "constant" and cfg.total_tokens is None and total <= cfg.warmup_steps:
            raise ValueError(f"lr_scheduler: total_steps={total} (trainer.max_steps when unset) must exceed "
                             f"warmup_steps={cfg.warmup_steps} for a {cfg.decay} decay")
        # LambdaLR steps after each optimizer step: the next step's lr reads the tokens generated so far
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, cfg, total, getattr(self, "trained_tokens", 0)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    module.configure_optimizers = MethodType(configure_optimizers, module)
