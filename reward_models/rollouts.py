"""Samples <-> JSON: rollout JSONL files (``score``) and the columnar payload of the HTTP reward server.

A rollout row is ``{"prompt": str, "completion": str, "metadata": {...}}`` plus optional
``"group_index": int`` and ``"completion_ids": [int, ...]`` (the generated tokens, padding removed).
Any other top-level column is metadata too (flat rows, TRL style); ``"reward"`` and ``"metrics"``
(written by :func:`write_rollouts`), ``"step"`` and ``"components"`` (written by training) are
ignored when reading.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from reward_models.functions import completion_id_lists
from reward_models.types import RewardOutput, Samples, TrainerState

# written outputs of a training run (lightning_trepo's RolloutWriter: step, reward, components), not inputs
RESERVED = {
    "prompt",
    "completion",
    "metadata",
    "group_index",
    "completion_ids",
    "reward",
    "metrics",
    "step",
    "components",
}


def _finite_or_none(values: Iterable[float]) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in values]


def _padded(ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max((len(r) for r in ids), default=0)
    out = torch.zeros(len(ids), width, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for i, row in enumerate(ids):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return out, mask


def samples_to_rows(samples: Samples, output: RewardOutput | None = None) -> list[dict[str, Any]]:
    """One JSON-ready dict per sample (with ``reward`` and ``metrics`` when ``output`` is given)."""
    ids = completion_id_lists(samples)
    groups = samples.group_index.tolist() if samples.group_index is not None else list(range(len(samples)))
    rows = []
    for i in range(len(samples)):
        row: dict[str, Any] = {"prompt": samples.prompts[i], "completion": samples.completions[i],
                               "metadata": samples.metadata[i], "group_index": int(groups[i])}
        if ids is not None:
            row["completion_ids"] = ids[i]
        if output is not None:
            row["reward"] = _finite_or_none([output.rewards[i].item()])[0]
            row["metrics"] = {k: _finite_or_none([v[i].item()])[0] for k, v in output.metrics.items()}
        rows.append(row)
    return rows


def write_rollouts(path: str | Path, samples: Samples, output: RewardOutput | None = None,
                   step: int | None = None) -> None:
    """Append the samples (and their rewards) to a JSONL file that ``score`` can read back; ``step`` (a training
    run's global step) leads each row when given."""
    lead = {} if step is None else {"step": int(step)}
    with open(path, "a", encoding="utf-8") as f:
        for row in samples_to_rows(samples, output):
            f.write(json.dumps({**lead, **row}, default=str) + "\n")


def _check_row(row: Any, where: str) -> None:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a rollout row must be a JSON object, got {type(row).__name__}")
    for key in ("prompt", "completion"):
        if not isinstance(row.get(key), str):
            raise ValueError(f"{where}: {key!r} must be a string (row keys: {sorted(row)})")
    if not isinstance(row.get("metadata", {}), dict):
        raise ValueError(f"{where}: 'metadata' must be an object")
    ids = row.get("completion_ids")
    if ids is not None and not (isinstance(ids, list) and all(isinstance(t, int) for t in ids)):
        raise ValueError(f"{where}: 'completion_ids' must be a list of ints")


def samples_from_rows(rows: list[dict[str, Any]], where: list[str] | None = None) -> Samples:
    """Samples from rollout rows; ``where[i]`` names row i in errors (e.g. ``"file.jsonl:12"``).

    Rows without ``group_index`` are grouped by identical (``step``, prompt), in order of appearance.
    """
    where = where or [f"row {i}" for i in range(len(rows))]
    by_prompt: dict[tuple[Any, str], int] = {}
    groups, metadata = [], []
    for row, loc in zip(rows, where, strict=True):
        _check_row(row, loc)
        meta = dict(row.get("metadata") or {})
        meta.update({k: v for k, v in row.items() if k not in RESERVED})
        metadata.append(meta)
        g = row.get("group_index")
        groups.append(
            int(g) if g is not None else by_prompt.setdefault((row.get("step"), row["prompt"]), len(by_prompt))
        )
    has_ids = [r.get("completion_ids") is not None for r in rows]
    if any(has_ids) and not all(has_ids):
        first = where[has_ids.index(not has_ids[0])]
        raise ValueError(f"{first}: 'completion_ids' must be present in every row or in none")
    ids, mask = _padded([r["completion_ids"] for r in rows]) if rows and all(has_ids) else (None, None)
    return Samples(prompts=[r["prompt"] for r in rows], completions=[r["completion"] for r in rows],
                   completion_ids=ids, completion_mask=mask, group_index=torch.tensor(groups, dtype=torch.long),
                   metadata=metadata)


def read_rollouts(path: str | Path, bad_lines: list[str] | None = None) -> Samples:
    """Read a rollout JSONL file; errors name the file and line number.

    With ``bad_lines`` (a list) a bad line is skipped and its error appended there instead of raised
    (``score`` reports each one and scores the rest)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"rollouts file {path} does not exist")
    rows, where = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{lineno}: invalid JSON: {err}") from err
                _check_row(row, f"{path}:{lineno}")
            except ValueError as err:
                if bad_lines is None:
                    raise
                bad_lines.append(str(err))
                continue
            rows.append(row)
            where.append(f"{path}:{lineno}")
    return samples_from_rows(rows, where)


def samples_to_payload(samples: Samples) -> dict[str, Any]:
    """Columnar JSON body of a ``POST /score`` request."""
    state = samples.trainer_state
    return {"prompts": samples.prompts, "completions": samples.completions, "metadata": samples.metadata,
            "group_index": samples.group_index.tolist() if samples.group_index is not None else None,
            "completion_ids": completion_id_lists(samples), "trainer_state": None if state is None else asdict(state)}


def _column(payload: dict[str, Any], key: str, n: int, ok: Any, what: str) -> list[Any] | None:
    """Optional field: None when absent or null, else :func:`_required_column`'s checked list."""
    return None if payload.get(key) is None else _required_column(payload, key, n, ok, what)


def _required_column(payload: dict[str, Any], key: str, n: int, ok: Any, what: str) -> list[Any]:
    """``payload[key]`` checked to be a list of ``n`` items each passing ``ok`` (errors name the item)."""
    values = payload.get(key)
    if not isinstance(values, list) or (n >= 0 and len(values) != n):
        raise ValueError(f"payload field {key!r} must be a list" + (f" of {n} items" if n >= 0 else ""))
    for i, value in enumerate(values):
        if not ok(value):
            raise ValueError(f"payload field {key!r} item {i}: must be {what}, got {type(value).__name__}")
    return values


def samples_from_payload(payload: dict[str, Any]) -> Samples:
    """Inverse of :func:`samples_to_payload`; raises ValueError naming the bad field and item.

    Columnar all the way: the decoded lists become the Samples' lists (no per-row copies), so a
    request costs its decoded JSON plus the token tensors."""
    if not isinstance(payload, dict):
        raise ValueError(f"payload must be a JSON object, got {type(payload).__name__}")
    prompts = _required_column(payload, "prompts", -1, lambda v: isinstance(v, str), "a string")
    completions = _required_column(payload, "completions", -1, lambda v: isinstance(v, str), "a string")
    n = len(completions)
    if len(prompts) != n:
        raise ValueError(f"payload has {len(prompts)} prompts but {n} completions")
    metadata = _column(payload, "metadata", n, lambda v: isinstance(v, dict), "an object")
    groups = _column(payload, "group_index", n, lambda v: type(v) is int, "an int")
    ids = _column(payload, "completion_ids", n, lambda v: isinstance(v, list) and all(type(t) is int for t in v),
                  "a list of ints")
    padded, mask = _padded(ids) if ids is not None else (None, None)
    samples = Samples(prompts=prompts, completions=completions, completion_ids=padded, completion_mask=mask,
                      group_index=torch.tensor(groups if groups is not None else range(n), dtype=torch.long),
                      metadata=metadata if metadata is not None else [{} for _ in range(n)])
    state = payload.get("trainer_state")
    if state is not None:
        names = [f.name for f in fields(TrainerState)]
        if not isinstance(state, dict) or not set(state) <= set(names):
            raise ValueError(f"payload field 'trainer_state' must be an object with keys from {names}, "
                             f"got {state!r:.200}")
        samples.trainer_state = TrainerState(**{k: int(v) for k, v in state.items()})
    return samples


def output_to_payload(out: RewardOutput) -> dict[str, Any]:
    """``{"rewards": [...], "metrics": {key: [...]}}`` with NaN as null."""
    return {"rewards": _finite_or_none(out.rewards.tolist()),
            "metrics": {k: _finite_or_none(v.float().tolist()) for k, v in out.metrics.items()}}


def output_from_payload(payload: dict[str, Any], n: int) -> RewardOutput:
    def tensor(values: Any, what: str) -> torch.Tensor:
        if not isinstance(values, list) or len(values) != n:
            raise ValueError(f"response field {what!r} must be a list of {n} numbers or nulls")
        return torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float32)

    metrics = payload.get("metrics") or {}
    return RewardOutput(
        tensor(payload.get("rewards"), "rewards"), {k: tensor(v, f"metrics.{k}") for k, v in metrics.items()}
    )
