"""Per-rank run state a checkpoint carries, and the stamp a resume must match.

:func:`save_run_state` / :func:`load_run_state` (called by ``RLModule``'s checkpoint hooks) store EVERY rank's RNG
streams (torch CPU/CUDA, Python, NumPy) and reward-tree state (e.g. ``Normalize(mode="running")``), gathered to
rank 0 and given back to each rank on resume, the module's ``trained_tokens``, and a stamp (algorithm, model, group
size) that a resume must match.
:func:`decorrelate_rank_rng` gives each rank its own sampling stream on a fresh start.
"""
from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn

from lightning_trepo.errors import InputError
from lightning_trepo.training.checkpoints import check_readable

STATE_KEY = "lightning_trepo"

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
    checkpoint[STATE_KEY] = {"stamp": run_stamp(module), "rank_states": states,
                             "trained_tokens": int(getattr(module, "trained_tokens", 0))}
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


def load_run_state(module: Any, checkpoint: dict[str, Any]) -> bool:
    """Check compatibility, then give this rank its own RNG streams and reward state back. Returns whether every
    rank got its own streams back (then :func:`decorrelate_rank_rng` must not run again on this resume); False for
    an older rank-0-only checkpoint or one written with another number of ranks."""
    trainer = module._trainer
    check_compatible(module, checkpoint, getattr(trainer, "ckpt_path", None) if trainer is not None else None)
    module.trained_tokens = int(checkpoint.get(STATE_KEY, {}).get("trained_tokens", 0))  # lr_scheduler.total_tokens
    states = checkpoint.get(STATE_KEY, {}).get("rank_states")
    if states is None:  # an older checkpoint: rank 0's state only
        module.reward.load_state_dict(checkpoint.get("reward_state", {}))
        if checkpoint.get("rng_state"):
            restore_rng(checkpoint["rng_state"])
        return False
    world = trainer.world_size if trainer is not None else 1
    if len(states) != world:
        rank_zero_warn(f"the checkpoint holds {len(states)} rank(s), this run has {world}: every rank starts from rank "
                       "0's random state and reward statistics (the run is not an exact continuation)")
    mine = states[module.global_rank] if len(states) == world else states[0]
    module.reward.load_state_dict(mine["reward"])
    restore_rng(mine["rng"])
    return len(states) == world


def decorrelate_rank_rng(rank: int, world_size: int) -> None:
    """Give each rank its own sampling stream. Lightning seeds every rank alike, so ranks would draw the same
    random numbers for their (different) prompts; the new seed is drawn from the shared state, so a run (and a
    resume that restored that state) stays reproducible."""
    if world_size <= 1:
        return
    seed = int(torch.randint(0, 2**31 - 1, (1,)))  # the same draw on every rank
    torch.manual_seed(seed + rank)
