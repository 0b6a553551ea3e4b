"""Prompt sources: JSONL (with file:line errors), local Hugging Face datasets, lists."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lightning_trepo.data import HFDatasetSource, JsonlSource, ListSource

ROWS = [{"prompt": "1+2=", "answer": "3"}, {"prompt": "4+5=", "answer": "9"}]


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_reads_objects_and_skips_blank_lines(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [json.dumps(ROWS[0]), "", json.dumps(ROWS[1])])
    assert JsonlSource(str(path)).load() == ROWS


def test_jsonl_missing_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        JsonlSource(str(missing)).load()


def test_jsonl_bad_json_names_file_and_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [json.dumps(ROWS[0]), "", '{"prompt": "x",'])
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: invalid JSON")):
        JsonlSource(str(path)).load()


def test_jsonl_non_object_row_names_file_and_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "list.jsonl", [json.dumps(ROWS[0]), '["a", "b"]'])
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: expected a JSON object") + ".*got list"):
        JsonlSource(str(path)).load()


def test_list_source_copies_rows_and_rejects_non_dicts() -> None:
    source = ListSource(ROWS)
    loaded = source.load()
    loaded[0]["prompt"] = "changed"
    assert source.load() == ROWS
    with pytest.raises(ValueError, match="ListSource row 1: expected a dict"):
        ListSource([ROWS[0], "1+1="]).load()  # type: ignore[list-item]


# --------------------------------------------------------------------------- Hugging Face datasets
@pytest.fixture
def datasets():
    return pytest.importorskip("datasets")  # the optional `data` extra


def test_hf_json_builder_with_local_data_files(tmp_path: Path, datasets) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [json.dumps(r) for r in ROWS])
    assert HFDatasetSource("json", data_files=str(path)).load() == ROWS
    assert HFDatasetSource(str(path)).load() == ROWS  # a data file as path: builder from the suffix


def test_hf_saved_to_disk_dataset_and_dataset_dict(tmp_path: Path, datasets) -> None:
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "single"))
    assert HFDatasetSource(str(tmp_path / "single")).load() == ROWS
    splits = {"train": ROWS, "test": ROWS[:1]}
    both = datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})
    both.save_to_disk(str(tmp_path / "dict"))
    assert HFDatasetSource(str(tmp_path / "dict"), split="test").load() == ROWS[:1]
    with pytest.raises(ValueError, match=r"no split 'validation'.*\['train', 'test'\]"):
        HFDatasetSource(str(tmp_path / "dict"), split="validation").load()


def test_hf_refuses_non_local_and_missing_files(tmp_path: Path, datasets) -> None:
    with pytest.raises(ValueError, match=r"'someone/some-dataset' is neither a local file.*no Hub downloads"):
        HFDatasetSource("someone/some-dataset").load()
    with pytest.raises(ValueError, match="needs data_files"):
        HFDatasetSource("json").load()
    missing = str(tmp_path / "missing-*.jsonl")
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        HFDatasetSource("json", data_files=[missing]).load()
