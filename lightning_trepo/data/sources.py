"""Prompt sources: where the rows of a :class:`~lightning_trepo.data.PromptDataModule` come from.

A source is any :class:`PromptSource` subclass; ``load()`` returns the rows as a list of dicts.
In a YAML config a source is chosen by ``class_path`` / ``init_args``::

    data:
      source:
        class_path: lightning_trepo.data.JsonlSource
        init_args: {path: data/train.jsonl}

Sources never touch the network: :class:`HFDatasetSource` loads local files only.
"""
from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Any

from lightning_trepo.data.tasks import TASKS, generate_task

__all__ = ["BuiltinTaskSource", "HFDatasetSource", "JsonlSource", "ListSource", "PromptSource"]

_LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")
_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")  # written by save_to_disk
_SUFFIX_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


class PromptSource:
    """Base class of prompt sources. Subclasses implement :meth:`load`."""

    def load(self) -> list[dict[str, Any]]:
        """Return every row of the source, in a stable order (row ``i`` is the ``i``-th dict)."""
        raise NotImplementedError(f"{type(self).__name__} must implement load()")

    def __repr__(self) -> str:
        fields = {k: v for k, v in vars(self).items() if not k.startswith("_") and not callable(v)}
        args = ", ".join(f"{k}={v!r}" for k, v in fields.items())
        return f"{type(self).__name__.removeprefix('LazyInstance_')}({args})"


class ListSource(PromptSource):
    """Rows given in code (tests, notebooks, programmatic use)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        """
        Args:
            rows: The rows, each a dict with at least the prompt (or messages) column.
        """
        self.rows = list(rows)

    def load(self) -> list[dict[str, Any]]:
        for i, row in enumerate(self.rows):
            if not isinstance(row, dict):
                raise ValueError(f"ListSource row {i}: expected a dict, got {type(row).__name__}")
        return [dict(row) for row in self.rows]

    def __repr__(self) -> str:
        return f"ListSource(<{len(self.rows)} rows>)"


class JsonlSource(PromptSource):
    """A JSON Lines file: one JSON object per line (blank lines are skipped)."""

    def __init__(self, path: str) -> None:
        """
        Args:
            path: Path of the ``.jsonl`` file (``~`` is expanded).
        """
        self.path = path

    def load(self) -> list[dict[str, Any]]:
        path = Path(self.path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"JsonlSource: prompt file {str(path)!r} does not exist")
        rows: list[dict[str, Any]] = []
        with path.open(encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{lineno}: expected a JSON object per line, got {type(row).__name__}")
                rows.append(row)
        return rows


class HFDatasetSource(PromptSource):
    """A Hugging Face ``datasets`` dataset read from LOCAL files (never from the Hub).

    Three forms:

    * ``path`` is a packaged builder (``json``, ``csv``, ``parquet``, ``text``, ``arrow``) and
      ``data_files`` names local files or globs: ``datasets.load_dataset(path, data_files=...)``;
    * ``path`` is a directory written by ``Dataset.save_to_disk`` (it holds ``dataset_info.json``
      or ``state.json``, or ``dataset_dict.json`` for a dict of splits): ``datasets.load_from_disk``;
    * ``path`` is another local directory or a data file (``.jsonl``, ``.csv``, ``.parquet``, ...):
      handed to ``load_dataset`` as is (a file's builder is picked from its suffix).
    """

    def __init__(
        self,
        path: str,
        data_files: str | list[str] | None = None,
        split: str = "train",
        name: str | None = None,
    ) -> None:
        """
        Args:
            path: Builder name (``json``, ...), a saved dataset directory, a data directory or file.
            data_files: Local file(s) or glob(s) for a builder ``path``.
            split: The split to read.
            name: Dataset configuration name, if the dataset has several.
        """
        self.path = path
        self.data_files = data_files
        self.split = split
        self.name = name

    def load(self) -> list[dict[str, Any]]:
        try:
            import datasets
        except ImportError as err:  # pragma: no cover - depends on the installed extras
            raise ImportError(f"{self!r} needs the `datasets` package: pip install 'lightning-trepo[data]'") from err
        local = Path(self.path).expanduser()
        if local.is_dir() and any((local / f).is_file() for f in _SAVED_MARKERS):
            loaded = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.DatasetDict):
                if self.split not in loaded:
                    raise ValueError(f"{self!r}: no split {self.split!r} in {str(local)!r}; splits: {list(loaded)}")
                loaded = loaded[self.split]
            return loaded.to_list()
        path, data_files = self._resolve(local)
        dataset = datasets.load_dataset(path, name=self.name, data_files=data_files, split=self.split)
        return dataset.to_list()

    def _resolve(self, local: Path) -> tuple[str, str | list[str] | None]:
        """Check everything is local and return the ``(path, data_files)`` for ``load_dataset``."""
        if local.is_file():
            if self.data_files is not None:
                raise ValueError(f"{self!r}: give either a data file as path or data_files, not both")
            builder = _SUFFIX_BUILDERS.get(local.suffix.lower())
            if builder is None:
                raise ValueError(f"{self!r}: cannot tell the format of {str(local)!r}; use path='json' (or csv, ...)")
            return builder, str(local)
        if local.is_dir():
            return str(local), self.data_files
        if self.path not in _LOCAL_BUILDERS:
            raise ValueError(
                f"{self!r}: {self.path!r} is neither a local file or directory nor a packaged builder "
                f"{list(_LOCAL_BUILDERS)}; HFDatasetSource only reads local files (no Hub downloads)"
            )
        if self.data_files is None:
            raise ValueError(f"{self!r}: path={self.path!r} needs data_files (local files or globs)")
        files = [self.data_files] if isinstance(self.data_files, str) else list(self.data_files)
        for pattern in files:
            if not glob.glob(os.path.expanduser(pattern)):
                raise FileNotFoundError(f"{self!r}: data file {pattern!r} does not exist (matches no file)")
        return self.path, [os.path.expanduser(f) for f in files]


class BuiltinTaskSource(PromptSource):
    """A built-in verifiable task generated from a seed (see :mod:`lightning_trepo.data.tasks`)."""

    def __init__(
        self,
        task: str = "addition",
        split: str = "train",
        size: int = 2000,
        seed: int = 0,
        digits: int = 2,
        unique: bool = True,
    ) -> None:
        """
        Args:
            task: One of ``addition``, ``two_step``, ``format``, ``calculator`` (multi-turn, with a ToolEnv).
            split: ``train`` or the held-out ``test`` (never overlapping, for any seeds).
            size: Number of rows.
            seed: Which problems are drawn (deterministic).
            digits: Number size: operands have up to ``digits`` decimal digits.
            unique: Every prompt at most once (errors if the split is too small); False samples with
                replacement.
        """
        if task not in TASKS:
            raise ValueError(f"unknown built-in task {task!r}; valid tasks: {sorted(TASKS)}")
        self.task = task
        self.split = split
        self.size = size
        self.seed = seed
        self.digits = digits
        self.unique = unique

    def load(self) -> list[dict[str, Any]]:
        return generate_task(self.task, self.split, self.size, self.seed, self.digits, self.unique)
