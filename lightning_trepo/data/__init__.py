"""Prompt data for online RL: sources (JSONL, local HF datasets, built-in tasks) and the data module."""
from lightning_trepo.data.datamodule import PromptDataModule
from lightning_trepo.data.loader import EncodedPrompts, PromptBatches, PromptDataLoader
from lightning_trepo.data.sources import BuiltinTaskSource, HFDatasetSource, JsonlSource, ListSource, PromptSource
from lightning_trepo.data.tasks import (
    HELD_OUT_PERCENT,
    TASKS,
    addition_problem,
    format_problem,
    generate_task,
    is_held_out,
    two_step_problem,
)

__all__ = [
    "HELD_OUT_PERCENT",
    "TASKS",
    "BuiltinTaskSource",
    "EncodedPrompts",
    "HFDatasetSource",
    "JsonlSource",
    "ListSource",
    "PromptBatches",
    "PromptDataLoader",
    "PromptDataModule",
    "PromptSource",
    "addition_problem",
    "format_problem",
    "generate_task",
    "is_held_out",
    "two_step_problem",
]
