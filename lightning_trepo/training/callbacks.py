"""Callbacks the CLI adds by default: crash safety (:class:`CrashSafety`: periodic atomic checkpoints and the
guard that keeps non-finite updates off the weights), the console line, the step progress bar, the final checkpoint."""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_trepo.errors import TrainingHalted, require
from lightning_trepo.training.checkpoints import CB, PeriodicCheckpoint, atomic_save


class StepPrinter(Callback):
    """Prints a console line every ``every_n_steps`` optimizer steps with the reward and loss, so logs read well
    without a UI (``step_printer:`` in a fit config)."""

    def __init__(self, every_n_steps: int = 1,
                 keys: tuple[str, ...] = ("reward/total", "loss/policy", "completion/length_mean", "kl",
                                          "perf/tokens_per_s")) -> None:
        """
        Args:
            every_n_steps: Print after every n-th optimizer step; 0 turns the line off.
            keys: Logged metrics to show (those not logged at that step are left out).
        """
        if every_n_steps < 0:
            raise ValueError(f"step_printer.every_n_steps must be >= 0 (0 = off), got {every_n_steps}")
        self.every_n_steps, self.keys = every_n_steps, keys
        self._printed_step = -1

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps == 0 or step % self.every_n_steps or step == self._printed_step:
            return  # (micro-batches of one optimizer step share its global_step: print once)
        self._printed_step = step
        metrics = trainer.callback_metrics
        parts = [f"{k}={float(metrics[k]):.{0 if k.startswith('perf/') else 4}f}" for k in self.keys if k in metrics]
        rank_zero_info(f"step {step:>5d} | " + " ".join(parts))


class StepProgressBar(RichProgressBar):
    """Rich progress bar that counts optimizer steps of ``max_steps`` (the stock one shows batches of an epoch
    under ``Epoch 0/-2`` when training is bounded by steps)."""

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_steps > 0:
            return f"{f'Training (epoch {current_epoch})':{len(self.validation_description)}}"
        return super()._get_train_description(current_epoch)

    def _show_steps(self, trainer: Trainer) -> None:
        if trainer.max_steps > 0 and self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, total=trainer.max_steps, completed=trainer.global_step)
            self.refresh()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._show_steps(trainer)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._show_steps(trainer)


def use_step_progress_bar(trainer: Trainer) -> None:
    """Swap the trainer's default Rich progress bar (exactly ``RichProgressBar``, made by the Trainer) for
    :class:`StepProgressBar`; a progress bar the user configured is kept."""
    for i, callback in enumerate(trainer.callbacks):
        if type(callback) is RichProgressBar:
            trainer.callbacks[i] = StepProgressBar(callback.refresh_rate, callback._leave, callback.theme,
                                                   callback._console_kwargs)


class SaveOnTrainEnd(Callback):
    """Writes ``last.ckpt`` next to the run's checkpoints when fit ends, so a run that stops between two
    validations (``max_steps`` reached mid-interval) still leaves its final state to resume or reload."""

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        ckpt = trainer.checkpoint_callback
        if ckpt is None or ckpt.dirpath is None or trainer.global_step == 0 or isinstance(ckpt, PeriodicCheckpoint):
            return  # PeriodicCheckpoint writes its own final checkpoint and last.ckpt
        atomic_save(trainer, os.path.join(ckpt.dirpath, "last.ckpt"))


class NonFiniteGuard(Callback):
    """Non-finite values never reach the weights: a NaN/inf loss or gradient skips that optimizer update (its
    gradients are dropped), counts it in ``train/skipped_updates`` and warns; ``max_consecutive`` skips in a row
    stop the run with a message (the last periodic checkpoint holds the last good state). With several ranks the
    decision is shared, so all ranks skip together. Under DeepSpeed ZeRO the gradients live in DeepSpeed's own
    buffers: a non-finite loss is still counted, warned about and stops the run after ``max_consecutive``, but the
    update itself is not dropped."""

    def __init__(self, max_consecutive: int = 5) -> None:
        """
        Args:
            max_consecutive: stop after this many skipped updates in a row.
        """
        require(max_consecutive >= 1, "NonFiniteGuard.max_consecutive", max_consecutive, "an integer >= 1", section=CB)
        self.max_consecutive = max_consecutive
        self.skipped, self.consecutive = 0, 0
        self._loss_bad = False

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        self._loss_bad = self._loss_bad or not bool(torch.isfinite(loss.detach()).all())

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        grads_ok = bool(torch.stack([torch.isfinite(p.grad).all() for p in params]).all()) if params else True
        bad = trainer.strategy.reduce_boolean_decision(self._loss_bad or not grads_ok, all=False)
        self._loss_bad = False
        if not bad:
            self.consecutive = 0
        else:
            for p in params:
                p.grad = None  # the optimizer skips parameters without a gradient: no update, no moment change
            self.skipped, self.consecutive = self.skipped + 1, self.consecutive + 1
            what = "gradient" if not grads_ok else "loss"
            rank_zero_warn(f"step {trainer.global_step}: non-finite {what}, "
                           f"update skipped ({self.consecutive} in a row, {self.skipped} in total)")
        pl_module.log("train/skipped_updates", float(self.skipped), on_step=True, on_epoch=False, batch_size=1)
        if self.consecutive >= self.max_consecutive:
            raise TrainingHalted(f"{self.consecutive} consecutive updates had a non-finite loss or gradient "
                                 f"(NonFiniteGuard.max_consecutive={self.max_consecutive}); training stopped at step "
                                 f"{trainer.global_step}. Lower the learning rate or check the reward for inf/NaN; "
                                 "resume from the last checkpoint with --ckpt_path last")

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped, self.consecutive = state_dict["skipped"], state_dict["consecutive"]


# ---------------------------------------------------------------------------------------------- crash safety
@dataclass
class CrashSafety:
    """``crash_safety:`` in a fit config: a :class:`PeriodicCheckpoint` and a :class:`NonFiniteGuard` that the CLI
    puts ahead of ``trainer.callbacks`` itself, so no overlay can drop them (a ``trainer.callbacks`` list in a later
    config replaces the earlier list whole). Only ``crash_safety.enabled: false`` turns both off;
    ``trainer.enable_checkpointing: false`` drops the checkpoint alone. A ``PeriodicCheckpoint`` or
    ``NonFiniteGuard`` that ``trainer.callbacks`` lists itself takes the place of the CLI's own."""

    enabled: bool = True
    """False: no periodic checkpoints and no non-finite guard (the one switch that turns crash safety off)."""
    every_n_steps: int = 10
    """An atomic checkpoint every N optimizer steps (at the first rollout boundary after N) and at the end of fit."""
    keep_last: int = 3
    """Step checkpoints kept (oldest removed); ``last.ckpt`` points at the newest, for ``fit --ckpt_path last``."""
    dirpath: str | None = None
    """Directory of the checkpoints; None = ``<logger dir>/checkpoints`` of this run."""
    max_consecutive_nonfinite: int = 5
    """A NaN/inf loss or gradient skips its update; this many skips in a row stop the run."""

    def __post_init__(self) -> None:
        for key in ("every_n_steps", "keep_last", "max_consecutive_nonfinite"):
            value = getattr(self, key)
            require(isinstance(value, int) and value >= 1, key, value, "an integer >= 1", section="crash_safety")

    def callbacks(self, listed: Sequence[Callback], checkpointing: bool = True) -> list[Callback]:
        """What to put ahead of ``listed`` (the instantiated ``trainer.callbacks``); ``checkpointing`` is
        ``trainer.enable_checkpointing`` (Lightning refuses a checkpoint callback when it is off)."""
        if not self.enabled:
            return []
        out: list[Callback] = []
        if checkpointing and not any(isinstance(c, PeriodicCheckpoint) for c in listed):
            out.append(PeriodicCheckpoint(self.every_n_steps, self.keep_last, self.dirpath))
        if not any(isinstance(c, NonFiniteGuard) for c in listed):
            out.append(NonFiniteGuard(self.max_consecutive_nonfinite))
        return out
