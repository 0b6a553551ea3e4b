"""Per-rollout controls the base module runs between rollouts, typed against the trainer they read: the adaptive KL
coefficient, dynamic sampling's stream of extra prompts and the ranks' collective flag (kept apart from ``base.py``
so the module stays pseudocode)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch import Trainer
from torch import Tensor

from lightning_trepo.algorithms.kl import adaptive_kl_coef, kl_estimate
from lightning_trepo.modules.config import UpdateConfig
from lightning_trepo.ops import masked_mean
from lightning_trepo.types import Rollout


class RolloutControls:
    """What a module decides between rollouts that depends on its trainer (None: a module used standalone)."""

    def __init__(self, trainer: Trainer | None, device: torch.device) -> None:
        """
        Args:
            trainer: the module's trainer, or None outside one (one rank, no data module).
            device: where a collective's tensors live.
        """
        self.trainer, self.device = trainer, device

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def _all_reduce(self, value: Tensor, op: str) -> Tensor:
        """``value`` reduced in place over the data-parallel ranks with ``torch.distributed.ReduceOp.<op>``
        (unchanged on one rank or outside a process group)."""
        dist = torch.distributed
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(value, op=getattr(dist.ReduceOp, op))
        return value

    def any_rank(self, flag: bool) -> bool:
        """``flag`` OR-ed over the data-parallel ranks, so that every rank makes the same generate calls."""
        return bool(self._all_reduce(torch.tensor([float(flag)], device=self.device), "MAX").item())

    def sum_over_ranks(self, count: int) -> int:
        """``count`` summed over the data-parallel ranks (itself on one rank)."""
        return int(self._all_reduce(torch.tensor([count], dtype=torch.int64, device=self.device), "SUM").item())

    def refill_stream(self) -> Iterator[dict[str, Any]] | None:
        """Dynamic sampling's extra prompt batches: a new ``refill_batches()`` stream of the trainer's data module;
        None outside a Trainer or with a data module that has none (then groups are only filtered, never refilled).
        The module keeps the first stream it gets for the whole run."""
        dm = getattr(self.trainer, "datamodule", None) if self.trainer is not None else None
        return dm.refill_batches() if hasattr(dm, "refill_batches") else None

    @torch.no_grad()
    def adaptive_kl(self, update: UpdateConfig, coef: float,
                    rollout: Rollout) -> tuple[float | None, dict[str, Tensor]]:
        """One adaptive KL controller step after a rollout (``update.kl_target``; verl ``kl_ctrl.type=adaptive``):
        the next β and the metrics, or (None, {}) when the controller is off or the rollout has no reference.

        The rollout's KL is the mean over sequences of the token-mean ``update.kl_estimator`` of π_old to π_ref
        (verl's ``current_kl``), averaged over ranks; ``n_steps`` counts every rank's samples. The rollout that was
        just used trained with ``coef``, the old β, as in verl.
        """
        if update.kl_target is None or rollout.ref_logprobs is None or rollout.old_logprobs is None:
            return None, {}
        kl = kl_estimate(rollout.old_logprobs, rollout.ref_logprobs, update.kl_estimator)
        current, n = masked_mean(kl, rollout.trained_mask, dim=-1).mean(), rollout.num_samples
        if self.trainer is not None and self.world_size > 1:
            current, n = self.trainer.strategy.reduce(current, reduce_op="mean"), n * self.world_size
        new = adaptive_kl_coef(coef, float(current), update.kl_target, update.kl_horizon, n)
        return new, {"kl/coef": torch.tensor(coef), "kl/rollout": current.detach().float().cpu()}
