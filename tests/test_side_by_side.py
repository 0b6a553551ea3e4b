"""benchmarks/side_by_side.py: one command runs this project's GRPO and TRePO (and TRL's GRPOTrainer when the
``bench`` extra is installed) on the same model and batch, and prints the table (--tiny on the CPU)."""
from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from tests.distributed.launch import ROOT, base_env, run_command

pytestmark = pytest.mark.slow


def test_tiny_side_by_side_prints_the_table(tmp_path):
    runs = "grpo,trepo,trl" if importlib.util.find_spec("trl") else "grpo,trepo"
    b, g, new = 2, 2, 8
    cmd = [sys.executable, str(ROOT / "benchmarks" / "side_by_side.py"), "--tiny", "--steps", "2", "--b", str(b),
           "--g", str(g), "--new", str(new), "--runs", runs, "--work", str(tmp_path / "work"),
           "--out", str(tmp_path / "out")]
    res = run_command(cmd, timeout=400, cwd=ROOT, env=base_env())
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    rows = {r["run"]: r for r in map(json.loads, (tmp_path / "out" / "side_by_side.jsonl").read_text().splitlines())}
    assert set(rows) == {"ours-grpo", "ours-trepo"} | ({"trl-grpo"} if "trl" in runs else set())
    for row in rows.values():
        assert "error" not in row, row
        assert row["steps"] == 2 and row["s_per_step"] > 0 and row["device"] == "cpu"
    for name in rows.keys() - {"ours-trepo"}:  # every completion holds between 1 and `new` tokens
        assert b * g <= rows[name]["gen_tokens_per_step"] <= b * g * new
    # TRePO generates its samples AND K=2 continuations at each of M=2 anchors, each at most `new` tokens
    trepo = rows["ours-trepo"]
    assert trepo["trepo/continuation_tokens"] > 0
    assert b * g < trepo["gen_tokens_per_step"] <= b * g * new * (1 + 2 * 2)
    assert "| ours-grpo |" in res.stdout and "generated tokens/s" in res.stdout
