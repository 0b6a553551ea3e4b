"""Batching of encoded prompts: rank sharding, per-epoch shuffling, rollout repeats, resumable position.

:class:`PromptBatches` is an ``IterableDataset`` (so Lightning injects no ``DistributedSampler``)
that yields ready-made batch dicts; :class:`PromptDataLoader` wraps it with ``batch_size=None`` and
exposes ``state_dict`` / ``load_state_dict`` so Lightning saves the position in its checkpoints
and a run resumed mid-epoch continues with the next unseen batch.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

__all__ = ["EncodedPrompts", "EpochCursor", "FixedCursor", "PromptBatches", "PromptDataLoader", "shard"]


@dataclass
class EncodedPrompts:
    """Rows of a source, ready to batch (all lists have one entry per row)."""

    prompts: list[str]  # text the policy sees (chat template applied if used)
    prompt_ids: list[list[int]]  # token ids of ``prompts`` (after truncation)
    metadata: list[dict[str, Any]]  # every other column of the row
    source: str = ""  # repr of the source, for error messages
    raw_prompts: list[str] | None = None  # prompt text before the chat template (what rewards read)

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class EpochCursor:
    """Where training iteration stands; shared by the data module and its loaders.

    ``epoch`` is the epoch of the last iterator started (-1: none yet) and ``consumed`` how many
    items of it were yielded. A new iterator starts epoch ``epoch + 1`` from its beginning, except
    right after :meth:`load_state_dict`, when it resumes the saved epoch after ``consumed`` items.
    """

    epoch: int = -1
    consumed: int = 0
    resume: bool = field(default=False, repr=False)

    def start(self, items_per_epoch: int) -> tuple[int, int]:
        """Begin an iteration: return ``(epoch, items to skip)`` and record it."""
        if self.resume and 0 <= self.epoch and self.consumed < items_per_epoch:
            epoch, skip = self.epoch, self.consumed
        else:
            epoch, skip = self.epoch + 1, 0
        self.epoch, self.consumed, self.resume = epoch, skip, False
        return epoch, skip

    def set_epoch(self, epoch: int) -> None:
        """Make the next iterator start ``epoch`` from its beginning."""
        self.epoch, self.consumed, self.resume = epoch - 1, 0, False

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.consumed, self.resume = int(state["epoch"]), int(state.get("consumed", 0)), True


class FixedCursor(EpochCursor):
    """A cursor that always starts epoch 0 from the beginning (evaluation: same batches every time)."""

    def start(self, items_per_epoch: int) -> tuple[int, int]:
        self.epoch, self.consumed = 0, 0
        return 0, 0


def shard(indices: list[int], rank: int, world_size: int) -> list[int]:
    """``indices[rank::world_size]`` cut to ``len(indices) // world_size`` so every rank gets as many."""
    return indices[rank::world_size][: len(indices) // world_size]


class PromptBatches(IterableDataset):
    """Batches of ``batch_size`` prompts for one rank, each yielded ``steps_per_rollout`` times.

    Every epoch the row order is a permutation seeded with ``seed + epoch`` (identical on all
    ranks), then sharded by :func:`shard`, so ranks see disjoint prompts and the same number of
    batches. A yielded batch is ``{"prompts", "prompt_ids", "metadata", "row", "rollout_step",
    "rollout_id"}`` where ``rollout_id = epoch * batches_per_epoch + batch index`` is the same on
    all ranks and ``rollout_step`` counts ``0 .. steps_per_rollout - 1`` over the repeats.
    """

    def __init__(
        self,
        data: EncodedPrompts,
        batch_size: int,
        steps_per_rollout: int = 1,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        cursor: EpochCursor | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if batch_size < 1 or steps_per_rollout < 1:
            raise ValueError(f"batch_size and steps_per_rollout must be >= 1, got {batch_size}, {steps_per_rollout}")
        self.data, self.batch_size, self.steps_per_rollout = data, batch_size, steps_per_rollout
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.drop_last = drop_last
        self.cursor = cursor if cursor is not None else EpochCursor()

    @property
    def rows_per_rank(self) -> int:
        return len(self.data) // self.world_size

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.rows_per_rank, self.batch_size)
        return full + int(rest > 0 and not self.drop_last)

    def __len__(self) -> int:
        return self.batches_per_epoch * self.steps_per_rollout

    def set_epoch(self, epoch: int) -> None:
        """Make the next iterator produce ``epoch`` (otherwise every new iterator advances by one)."""
        self.cursor.set_epoch(epoch)

    def order(self, epoch: int) -> list[int]:
        """This rank's row indices for ``epoch`` (before batching)."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            indices = torch.randperm(len(self.data), generator=generator).tolist()
        else:
            indices = list(range(len(self.data)))
        return shard(indices, self.rank, self.world_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._generate()

    def _generate(self) -> Iterator[dict[str, Any]]:
        epoch, skip = self.cursor.start(len(self))
        mine, nb = self.order(epoch), self.batches_per_epoch
        for b in range(skip // self.steps_per_rollout, nb):
            rows = mine[b * self.batch_size : (b + 1) * self.batch_size]
            for step in range(self.steps_per_rollout):
                position = b * self.steps_per_rollout + step
                if position < skip:
                    continue
                self.cursor.consumed = position + 1
                yield self._batch(rows, rollout_step=step, rollout_id=epoch * nb + b)

    def _batch(self, rows: list[int], rollout_step: int, rollout_id: int) -> dict[str, Any]:
        return {
            "prompts": [self.data.prompts[i] for i in rows],
            "raw_prompts": [(self.data.raw_prompts or self.data.prompts)[i] for i in rows],
            "prompt_ids": [list(self.data.prompt_ids[i]) for i in rows],
            "metadata": [dict(self.data.metadata[i]) for i in rows],
            "row": list(rows),
            "rollout_step": rollout_step,
            "rollout_id": rollout_id,
        }


def keep_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """Collate that keeps the ready-made batch dict as is (lists stay lists)."""
    return batch


class PromptDataLoader(DataLoader):
    """A single-process ``DataLoader`` over :class:`PromptBatches` whose position can be saved.

    Lightning stores ``state_dict()`` in the checkpoint's loop state and calls
    ``load_state_dict`` before iterating on resume.
    """

    def __init__(self, dataset: PromptBatches) -> None:
        # A private generator: creating an iterator would otherwise draw from the global torch RNG (the
        # sampling RNG), so a resumed run would sample different rollouts than an uninterrupted one.
        super().__init__(dataset, batch_size=None, collate_fn=keep_batch, num_workers=0,
                         generator=torch.Generator().manual_seed(0))

    def state_dict(self) -> dict[str, int]:
        return self.dataset.cursor.state_dict()

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.dataset.cursor.load_state_dict(state_dict)
