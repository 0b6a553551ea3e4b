"""``PromptDataModule``: prompts for online RL, one batch per rollout, repeated for policy epochs.

The policy's tokenizer is not a config value of the data module: the RL module calls
:meth:`PromptDataModule.connect` from its ``setup`` with the tokenizer, how many optimisation steps
each rollout is reused for, and the rank layout. Train batches are dicts::

    {
        "prompts": list[str],            # B prompt texts as the policy sees them (chat template applied)
        "raw_prompts": list[str],        # B prompts before the chat template (what rewards and judges read)
        "prompt_ids": list[list[int]],   # B token id lists (unpadded, after truncation)
        "metadata": list[dict],          # B dicts: every other column of the row (e.g. "answer")
        "row": list[int],                # B source row indices
        "rollout_step": int,             # 0 .. steps_per_rollout-1: 0 means "generate a new rollout"
        "rollout_id": int,               # epoch * batches_per_epoch + batch index, same on all ranks
    }
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from jsonargparse import lazy_instance
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from lightning_trepo.data.encoding import OverlongPrompt, encode_rows, validate_rows
from lightning_trepo.data.loader import (
    EncodedPrompts,
    EpochCursor,
    FixedCursor,
    PromptBatches,
    PromptDataLoader,
    keep_batch,
)
from lightning_trepo.data.sources import BuiltinTaskSource, PromptSource
from lightning_trepo.errors import check_choice

__all__ = ["PromptDataModule"]
REFILL_SEED_OFFSET = 1_000_003  # dynamic sampling's refill stream: another shuffle of the same rows


class PromptDataModule(LightningDataModule):
    """Prompts from a source, batched per rank, each batch yielded once per policy step of its rollout.

    Args:
        source: Training prompts (``class_path`` / ``init_args`` of a ``PromptSource``). Default:
            the built-in ``addition`` task, train split.
        val_source: Held-out prompts for validation; no validation loop when unset.
        batch_size: Prompts per optimizer step per rank (each is sampled G times by the algorithm).
        val_batch_size: Prompts per validation step per rank.
        prompt_column: Column holding the prompt: a string, or a chat (a list of ``{role, content}``
            messages, TRL's conversational format) rendered with the tokenizer's chat template.
            Prompts rendered from a chat reach the rewards as messages too (``Samples.prompt_messages``).
        messages_column: Column holding a chat (list of ``{role, content}``), used when a row has no
            ``prompt_column``; always rendered with the tokenizer's chat template.
        max_prompt_length: Longest prompt in tokens (after the chat template).
        overlong_prompt: What to do with longer prompts: ``error`` (raise, naming the row) or
            ``truncate_left`` (keep the last ``max_prompt_length`` tokens, warn once with the count).
        shuffle: Shuffle the training rows every epoch (seeded with ``seed + epoch``).
        seed: Seed of the training shuffle.
        drop_last: Drop each rank's last incomplete training batch.
        system_prompt: A system turn put before every chat-templated prompt (chats that start with a
            system message keep theirs); needs the chat template (``policy.use_chat_template``).
    """

    def __init__(
        self,
        source: PromptSource = lazy_instance(BuiltinTaskSource),
        val_source: PromptSource | None = None,
        batch_size: int = 8,
        val_batch_size: int = 16,
        prompt_column: str = "prompt",
        messages_column: str = "messages",
        max_prompt_length: int = 256,
        overlong_prompt: OverlongPrompt = "error",
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        system_prompt: str | None = None,
    ) -> None:
        super().__init__()
        sizes = {"batch_size": batch_size, "val_batch_size": val_batch_size, "max_prompt_length": max_prompt_length}
        for key, value in sizes.items():
            if value < 1:
                raise ValueError(f"data.init_args.{key} must be >= 1, got {value}")
        check_choice("overlong_prompt", overlong_prompt, OverlongPrompt, section="data.init_args")
        self.source = source if source is not None else BuiltinTaskSource()
        self.val_source = val_source
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.prompt_column, self.messages_column = prompt_column, messages_column
        self.max_prompt_length, self.overlong_prompt = max_prompt_length, overlong_prompt
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.system_prompt = system_prompt
        self.steps_per_rollout, self.rank, self.world_size = 1, 0, 1
        self.cursor = EpochCursor()
        self._rows: dict[str, list[dict[str, Any]]] = {}
        self._encoded: dict[str, EncodedPrompts] = {}

    # ------------------------------------------------------------------ loading and connecting
    def setup(self, stage: str | None = None) -> None:
        """Load and validate the rows of the sources (no tokenizer needed yet)."""
        self._load()

    def _load(self) -> None:
        sources = {"train": self.source, "val": self.val_source}
        for split, source in sources.items():
            if source is None or split in self._rows:
                continue
            rows = source.load()
            validate_rows(rows, self.prompt_column, self.messages_column, repr(source))
            self._rows[split] = rows

    def connect(
        self,
        tokenizer: Any,
        steps_per_rollout: int = 1,
        use_chat_template: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        """Give the data module what only the RL module knows; call before the dataloaders are built.

        Args:
            tokenizer: The policy's Hugging Face tokenizer.
            steps_per_rollout: How many consecutive training steps reuse one rollout (policy epochs x
                minibatches); each batch is yielded that many times with ``rollout_step`` 0, 1, ...
            use_chat_template: Wrap plain prompts as a user turn of the chat template. ``None``: when
                the tokenizer has a ``chat_template``. Chat (``messages``) rows always use it.
            rank: This process's rank among ``world_size`` data-parallel ranks.
            world_size: Number of data-parallel ranks.
        """
        if steps_per_rollout < 1:
            raise ValueError(f"steps_per_rollout must be >= 1, got {steps_per_rollout}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got rank={rank}")
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if use_chat_template and not has_template:
            raise ValueError("use_chat_template=True but the tokenizer has no chat_template")
        template = has_template if use_chat_template is None else use_chat_template
        if self.system_prompt is not None and not template:
            raise ValueError("data.init_args.system_prompt is set but prompts are not chat-templated: the tokenizer "
                             "has no chat_template or model.init_args.policy.use_chat_template is false")
        self.steps_per_rollout, self.rank, self.world_size = steps_per_rollout, rank, world_size
        self._load()
        sources = {"train": self.source, "val": self.val_source}
        self._encoded = {
            split: encode_rows(
                rows,
                tokenizer,
                prompt_column=self.prompt_column,
                messages_column=self.messages_column,
                use_chat_template=template,
                max_prompt_length=self.max_prompt_length,
                overlong_prompt=self.overlong_prompt,
                source=repr(sources[split]),
                system_prompt=self.system_prompt,
            )
            for split, rows in self._rows.items()
        }

    def _connected(self, split: str, hook: str) -> EncodedPrompts:
        if not self._encoded:
            raise RuntimeError(
                f"PromptDataModule.{hook}() needs the policy's tokenizer: call connect(tokenizer, ...) first "
                f"(the RL module does this in its setup)"
            )
        return self._encoded[split]

    # ------------------------------------------------------------------ dataloaders
    def train_dataset(self) -> PromptBatches:
        """The training batches of this rank (an ``IterableDataset``), sharing this module's epoch cursor."""
        data = self._connected("train", "train_dataloader")
        dataset = PromptBatches(
            data,
            self.batch_size,
            steps_per_rollout=self.steps_per_rollout,
            shuffle=self.shuffle,
            seed=self.seed,
            rank=self.rank,
            world_size=self.world_size,
            drop_last=self.drop_last,
            cursor=self.cursor,
        )
        if dataset.batches_per_epoch == 0:
            raise ValueError(
                f"{data.source} has {len(data)} rows: {dataset.rows_per_rank} per rank for world_size="
                f"{self.world_size}, fewer than batch_size={self.batch_size} with drop_last=True, so no batch"
            )
        return dataset

    def train_dataloader(self) -> PromptDataLoader:
        """Batches of ``batch_size`` prompts, reshuffled each epoch, each yielded ``steps_per_rollout`` times."""
        return PromptDataLoader(self.train_dataset())

    def refill_batches(self) -> Iterator[dict[str, Any]]:
        """Endless extra training batches for DAPO dynamic sampling (``rollout.dynamic_sampling``): this rank's rows
        in an order shuffled independently of the training stream (seed ``seed + REFILL_SEED_OFFSET``), never
        touching the training cursor. Its position is not checkpointed: a resumed run refills from a fresh stream."""
        data = self._connected("train", "refill_batches")
        dataset = PromptBatches(data, self.batch_size, shuffle=True, seed=self.seed + REFILL_SEED_OFFSET,
                                rank=self.rank, world_size=self.world_size, drop_last=self.drop_last,
                                cursor=EpochCursor())
        if dataset.batches_per_epoch == 0:
            raise ValueError(f"{data.source} has too few rows for one refill batch of batch_size={self.batch_size}")
        while True:
            yield from dataset

    def val_dataloader(self) -> DataLoader | list:
        """Held-out batches of ``val_batch_size`` prompts in source order (``[]`` when no ``val_source``)."""
        if self.val_source is None:
            return []
        data = self._connected("val", "val_dataloader")
        dataset = PromptBatches(
            data, self.val_batch_size, rank=self.rank, world_size=self.world_size, cursor=FixedCursor()
        )
        if dataset.batches_per_epoch == 0:
            raise ValueError(f"{data.source} has {len(data)} rows, fewer than world_size={self.world_size}")
        return DataLoader(dataset, batch_size=None, collate_fn=keep_batch, num_workers=0,
                          generator=torch.Generator().manual_seed(0))

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """The training position: epoch of the current pass and batches already yielded in it."""
        return self.cursor.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume: the next training iterator continues the saved epoch after its yielded batches."""
        self.cursor.load_state_dict(state_dict)
