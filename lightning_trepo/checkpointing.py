"""Nothing lost to a crash: periodic atomic checkpoints, per-rank run state, refusal of foreign checkpoints.

- :class:`PeriodicCheckpoint` writes ``step=NNNNNN.ckpt`` every ``every_n_steps`` optimizer steps (at the end of a
  rollout, so a resume regenerates nothing), keeps the newest ``keep_last``, and points ``last.ckpt`` at the newest.
  Every write goes to a temporary name first and is moved into place with ``os.replace``, so a kill during the
  write leaves the previous checkpoints intact. ``fit --ckpt_path last`` resumes from the newest ``last.ckpt`` of
  this run name (any earlier version directory of the logger).
- :func:`save_run_state` / :func:`load_run_state` (called by ``RLModule``'s checkpoint hooks) store EVERY rank's
  RNG streams (torch CPU/CUDA, Python, NumPy) and reward-tree state (e.g. ``Normalize(mode="running")``),
  gathered to rank 0 and given back to each rank on resume, plus a stamp (algorithm, model, group size) that a
  resume must match.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

from lightning_trepo.errors import InputError, TrainingHalted, require

STATE_KEY = "lightning_trepo"
CB = "trainer.callbacks"  # where the callbacks' settings live in the YAML
STEP_FILE = re.compile(r"^step=(\d+)\.ckpt$")


# ---------------------------------------------------------------------------------------------- per-rank state
def capture_rng() -> dict[str, Any]:
    """This process's random streams."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)  # loadable weights_only
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def _gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (a collective when distributed: all ranks save a checkpoint together)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def run_stamp(module: Any) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed by ``module``."""
    return {"algorithm": type(module).__name__, "model_path": module.policy_cfg.model_path,
            "group_size": module.rollout_cfg.group_size}


def save_run_state(module: Any, checkpoint: dict[str, Any]) -> None:
    """Put every rank's RNG streams and reward state, and the compatibility stamp, into ``checkpoint``."""
    states = _gather({"rng": capture_rng(), "reward": _cpu(module.reward.state_dict())})
    checkpoint[STATE_KEY] = {"stamp": run_stamp(module), "rank_states": states}
    # rank 0's view under the keys older checkpoints used
    checkpoint["reward_state"], checkpoint["rng_state"] = states[0]["reward"], states[0]["rng"]


def check_compatible(module: Any, checkpoint: dict[str, Any], path: str | None = None) -> None:
    """Refuse a checkpoint of another algorithm, model or group size, naming each mismatch."""
    _refuse_mismatch(_saved_stamp(checkpoint), run_stamp(module), path)


def _saved_stamp(checkpoint: dict[str, Any]) -> dict[str, Any]:
    saved = checkpoint.get(STATE_KEY, {}).get("stamp")
    if saved is None:  # written before the stamp existed: what the hyper-parameters tell
        hp = checkpoint.get("hyper_parameters", {})
        policy, rollout = hp.get("policy"), hp.get("rollout")
        saved = {"model_path": getattr(policy, "model_path", None), "group_size": getattr(rollout, "group_size", None)}
    return saved


def cli_stamp(model_config: Any) -> dict[str, Any]:
    """:func:`run_stamp` from the CLI's (not yet instantiated) ``model`` config."""
    init = model_config.get("init_args") or {}
    policy, rollout = init.get("policy") or {}, init.get("rollout") or {}
    path = policy.get("model_path") if hasattr(policy, "get") else getattr(policy, "model_path", None)
    size = rollout.get("group_size") if hasattr(rollout, "get") else getattr(rollout, "group_size", None)
    return {"algorithm": str(model_config.get("class_path", "")).rpartition(".")[2] or None,
            "model_path": None if path in ("", "null", "None") else path, "group_size": size}


def refuse_foreign_checkpoint(config: Any) -> None:
    """For the CLI, before LightningCLI adopts a ``--ckpt_path`` file's hyper-parameters (which would silently turn
    ``--config rloo.yaml`` into the checkpoint's GRPO): refuse a broken file or one of another run."""
    sub = config.get("subcommand")
    path = config[sub].get("ckpt_path") if sub else None
    if not path or not (os.path.isfile(path) or os.path.isdir(path)):
        return
    check_readable(str(path))
    if os.path.isdir(path):
        return
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    _refuse_mismatch(_saved_stamp(checkpoint), cli_stamp(config[sub].get("model") or {}), str(path))


def _refuse_mismatch(saved: dict[str, Any], now: dict[str, Any], path: str | None) -> None:
    diffs = [f"{key}: checkpoint {saved[key]!r}, this run {now[key]!r}" for key in now
             if saved.get(key) is not None and now[key] is not None and saved[key] != now[key]]
    if diffs:
        where = f" {path}" if path else ""
        raise InputError(f"checkpoint{where} does not fit this run ({'; '.join(diffs)}); resume with the settings it "
                         "was written with, or start without --ckpt_path")


def load_run_state(module: Any, checkpoint: dict[str, Any]) -> None:
    """Check compatibility, then give this rank its own RNG streams and reward state back."""
    trainer = module._trainer
    check_compatible(module, checkpoint, getattr(trainer, "ckpt_path", None) if trainer is not None else None)
    states = checkpoint.get(STATE_KEY, {}).get("rank_states")
    module._rank_state_restored = False
    if states is None:  # an older checkpoint: rank 0's state only
        module.reward.load_state_dict(checkpoint.get("reward_state", {}))
        if checkpoint.get("rng_state"):
            restore_rng(checkpoint["rng_state"])
        return
    world = trainer.world_size if trainer is not None else 1
    if len(states) != world:
        rank_zero_warn(f"the checkpoint holds {len(states)} rank(s), this run has {world}: every rank starts from rank "
                       "0's random state and reward statistics (the run is not an exact continuation)")
    mine = states[module.global_rank] if len(states) == world else states[0]
    module.reward.load_state_dict(mine["reward"])
    restore_rng(mine["rng"])
    module._rank_state_restored = len(states) == world  # per-rank streams are back: no re-decorrelation


# ---------------------------------------------------------------------------------------------- files
def atomic_save(trainer: Trainer, path: str | Path) -> None:
    """``trainer.save_checkpoint`` to ``path`` through a temporary name and ``os.replace`` (all ranks call it)."""
    path = str(path)
    tmp = f"{path}.tmp"
    trainer.save_checkpoint(tmp)
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


# ---------------------------------------------------------------------------------------------- non-finite updates
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
