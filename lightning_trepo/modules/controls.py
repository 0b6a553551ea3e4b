"""Per-rollout controls the base module runs between rollouts: the adaptive KL coefficient and dynamic sampling's
stream of extra prompts (kept apart from ``base.py`` so the module stays pseudocode)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from lightning_trepo.algorithms.kl import adaptive_kl_coef, kl_estimate
from lightning_trepo.ops import masked_mean
from lightning_trepo.types import Rollout


@torch.no_grad()
def adaptive_kl_step(module: Any, rollout: Rollout) -> dict[str, Tensor]:
    """One adaptive KL controller step after a rollout (``update.kl_target``; verl ``kl_ctrl.type=adaptive``).

    The rollout's KL is the mean over sequences of the token-mean ``update.kl_estimator`` of π_old to π_ref
    (verl's ``current_kl``), averaged over ranks; ``n_steps`` counts every rank's samples. β lives in the module's
    ``kl_coef_value`` buffer (checkpointed); the rollout that was just used trained with the old β, as in verl.
    """
    update = module.update_cfg
    if update.kl_target is None or rollout.ref_logprobs is None:
        return {}
    kl = kl_estimate(rollout.old_logprobs, rollout.ref_logprobs, update.kl_estimator)
    current, n = masked_mean(kl, rollout.trained_mask, dim=-1).mean(), rollout.num_samples
    trainer = module._trainer
    if trainer is not None and trainer.world_size > 1:
        current, n = trainer.strategy.reduce(current, reduce_op="mean"), n * trainer.world_size
    coef = module.kl_coef
    module.kl_coef_value.fill_(adaptive_kl_coef(coef, float(current), update.kl_target, update.kl_horizon, n))
    return {"kl/coef": torch.tensor(coef), "kl/rollout": current.detach().float().cpu()}


def refill_stream(module: Any) -> Iterator[dict[str, Any]] | None:
    """Dynamic sampling's extra prompt batches: the data module's ``refill_batches()`` stream, made once per module;
    None outside a Trainer or with a data module that has none (then groups are only filtered, never refilled)."""
    if getattr(module, "_refill", None) is None and module._trainer is not None:
        dm = getattr(module.trainer, "datamodule", None)
        module._refill = dm.refill_batches() if hasattr(dm, "refill_batches") else None
    return getattr(module, "_refill", None)


def any_rank(module: Any, flag: bool) -> bool:
    """``flag`` OR-ed over the data-parallel ranks, so that every rank makes the same generate calls."""
    dist = torch.distributed
    trainer = module._trainer
    if trainer is None or trainer.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([float(flag)], device=module.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
