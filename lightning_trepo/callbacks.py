"""Callbacks the CLI adds by default."""
from __future__ import annotations

import os
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from lightning_trepo.checkpointing import PeriodicCheckpoint, atomic_save


class StepPrinter(Callback):
    """Prints one line per optimizer step with the reward and loss, so logs read well without a UI."""

    def __init__(self, keys: tuple[str, ...] = ("reward/total", "loss/policy", "completion/length_mean", "kl")) -> None:
        self.keys = keys

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        metrics = trainer.callback_metrics
        parts = [f"{k}={float(metrics[k]):.4f}" for k in self.keys if k in metrics]
        rank_zero_info(f"step {trainer.global_step:>5d} | " + " ".join(parts))


class SaveOnTrainEnd(Callback):
    """Writes ``last.ckpt`` next to the run's checkpoints when fit ends, so a run that stops between two
    validations (``max_steps`` reached mid-interval) still leaves its final state to resume or reload."""

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        ckpt = trainer.checkpoint_callback
        if ckpt is None or ckpt.dirpath is None or trainer.global_step == 0 or isinstance(ckpt, PeriodicCheckpoint):
            return  # PeriodicCheckpoint writes its own final checkpoint and last.ckpt
        atomic_save(trainer, os.path.join(ckpt.dirpath, "last.ckpt"))
