"""Nothing lost to a crash: periodic atomic checkpoints, and refusal of broken checkpoint files.

:class:`PeriodicCheckpoint` writes ``step=NNNNNN.ckpt`` every ``every_n_steps`` optimizer steps (at the end of a
rollout, so a resume regenerates nothing), keeps the newest ``keep_last``, and points ``last.ckpt`` at the newest.
Every write goes to a temporary name first and is moved into place with ``os.replace``, so a kill during the write
leaves the previous checkpoints intact. ``fit --ckpt_path last`` resumes from the newest ``last.ckpt`` of this run
name (any earlier version directory of the logger). What a checkpoint carries besides the weights (every rank's
random streams and reward state) is :mod:`lightning_trepo.training.run_state`.
"""
from __future__ import annotations

import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import CheckpointIO

from lightning_trepo.errors import InputError, require

CB = "trainer.callbacks"  # where the callbacks' settings live in the YAML
STEP_FILE = re.compile(r"^step=(\d+)\.ckpt$")


# ---------------------------------------------------------------------------------------------- files
def atomic_save(trainer: Trainer, path: str | Path) -> None:
    """``trainer.save_checkpoint`` to ``path`` through a temporary name and ``os.replace`` (all ranks call it)."""
    path = str(path)
    tmp = f"{path}.tmp"
    trainer.save_checkpoint(tmp, weights_only=False)  # the full state (saying so keeps Lightning quiet)
    if trainer.is_global_zero:
        _replace(tmp, path)
    trainer.strategy.barrier()


def _replace(src: str, dst: str) -> None:
    if os.path.isdir(src) and os.path.isdir(dst) and not os.path.islink(dst):  # sharded checkpoint directories
        old = f"{dst}.old"
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.replace(src, dst)


def _point_last(target: str, last: str) -> None:
    """Atomically make ``last`` a link to ``target`` (a copy where links are not allowed)."""
    tmp = f"{last}.tmp"
    if os.path.lexists(tmp):
        os.remove(tmp)
    try:
        os.symlink(os.path.basename(target), tmp)
    except OSError:
        shutil.copyfile(target, tmp)
    os.replace(tmp, last)


def check_readable(path: str) -> None:
    """Refuse a missing, empty or truncated checkpoint file with its name (before torch.load fails obscurely)."""
    if os.path.isdir(path):
        return  # a sharded (DeepSpeed / distributed) checkpoint directory
    if not os.path.exists(path):
        raise InputError(f"checkpoint {path!r} does not exist")
    size = os.path.getsize(path)
    if size == 0 or not zipfile.is_zipfile(path):
        raise InputError(f"checkpoint {path!r} is truncated or not a checkpoint ({size} bytes, no readable archive); "
                         "resume from an earlier one (e.g. the previous step=*.ckpt next to it)")
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(f"checkpoint {path!r} is damaged ({err})") from None


class PeriodicCheckpoint(ModelCheckpoint):
    """Atomic checkpoints every N optimizer steps and at the end of fit, keeping the last k.

    Subclasses ``ModelCheckpoint`` only to be the trainer's checkpoint callback (Lightning then adds no
    validation-time checkpoints of its own and asks it for ``--ckpt_path last``); its own top-k saving is off.
    """

    def __init__(self, every_n_steps: int = 10, keep_last: int = 3, dirpath: str | None = None) -> None:
        """
        Args:
            every_n_steps: write a checkpoint every N optimizer steps (at the first rollout boundary after N steps).
            keep_last: keep this many step checkpoints (oldest removed); ``last.ckpt`` points at the newest.
            dirpath: directory of the checkpoints; None = ``<logger dir>/checkpoints`` of this run.
        """
        require(every_n_steps >= 1, "PeriodicCheckpoint.every_n_steps", every_n_steps, "an integer >= 1", section=CB)
        require(keep_last >= 1, "PeriodicCheckpoint.keep_last", keep_last, "an integer >= 1", section=CB)
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=False, enable_version_counter=False)
        self.every_n_steps, self.keep_last, self._fixed_dir = every_n_steps, keep_last, dirpath is not None
        self._saved_step = 0
        self._step_at_batch_start = 0

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        io = trainer.strategy.checkpoint_io
        if not isinstance(io, _CheckedIO):  # a broken resume file is refused by name before torch.load sees it
            trainer.strategy.checkpoint_io = _CheckedIO(io)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._saved_step = trainer.global_step  # 0, or the step a resume starts from

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        stepped = trainer.global_step > self._step_at_batch_start  # not in the middle of gradient accumulation
        due = trainer.global_step - self._saved_step >= self.every_n_steps
        if stepped and due and _rollout_done(pl_module, batch):
            self.save_now(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_step > 0 and trainer.global_step != self._saved_step:
            self.save_now(trainer)

    def save_now(self, trainer: Trainer) -> str:
        """Write ``step=<global step>.ckpt`` atomically, repoint ``last.ckpt``, drop the oldest beyond ``keep_last``."""
        path = os.path.join(self.dirpath, f"step={trainer.global_step:06d}.ckpt")
        if trainer.is_global_zero:
            os.makedirs(self.dirpath, exist_ok=True)
        self.last_model_path = path
        atomic_save(trainer, path)
        self._saved_step = trainer.global_step
        if trainer.is_global_zero:
            _point_last(path, os.path.join(self.dirpath, "last.ckpt"))
            for old in self.step_checkpoints(self.dirpath)[:-self.keep_last]:
                _remove(old)
        trainer.strategy.barrier()
        return path

    @staticmethod
    def step_checkpoints(dirpath: str) -> list[str]:
        """``step=*.ckpt`` files of ``dirpath``, oldest first."""
        if not os.path.isdir(dirpath):
            return []
        found = [(int(m.group(1)), os.path.join(dirpath, n)) for n in os.listdir(dirpath) if (m := STEP_FILE.match(n))]
        return [p for _, p in sorted(found)]

    def _find_last_checkpoints(self, trainer: Trainer) -> set[str]:
        """For ``--ckpt_path last``: the newest ``last.ckpt`` of this run name, whichever logger version wrote it."""
        dirs = [self.dirpath] if self._fixed_dir else _run_checkpoint_dirs(trainer)
        found = set()
        for d in filter(None, dirs):
            last = os.path.join(d, "last.ckpt")
            if os.path.exists(last):
                found.add(os.path.realpath(last))
            elif self.step_checkpoints(d):
                found.add(self.step_checkpoints(d)[-1])
        return found


class _CheckedIO(CheckpointIO):
    """The strategy's checkpoint IO, with :func:`check_readable` before every load."""

    def __init__(self, inner: CheckpointIO) -> None:
        self.inner = inner

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        self.inner.save_checkpoint(checkpoint, path, storage_options)

    def load_checkpoint(self, path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        check_readable(str(path))
        return self.inner.load_checkpoint(path, *args, **kwargs)

    def remove_checkpoint(self, path: Any) -> None:
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        self.inner.teardown()


def _rollout_done(module: Any, batch: Any) -> bool:
    """Whether the batch just trained was the last minibatch/epoch of its rollout (a resume then starts fresh)."""
    steps = getattr(getattr(module, "update_cfg", None), "steps_per_rollout", 1)
    step = int(batch.get("rollout_step", 0)) if isinstance(batch, dict) else 0
    return step == steps - 1


def _run_checkpoint_dirs(trainer: Trainer) -> list[str]:
    """``<save_dir>/<name>/*/checkpoints`` of the first logger (every version of this run name), else the root dir."""
    logger = trainer.loggers[0] if trainer.loggers else None
    if logger is None or logger.save_dir is None:
        return [os.path.join(trainer.default_root_dir, "checkpoints")]
    root = Path(logger.save_dir) / (logger.name or "")
    return [str(p) for p in sorted(root.glob("*/checkpoints"))] if root.is_dir() else []


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)
