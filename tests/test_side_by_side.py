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


def test_repeats_pool_every_step_after_each_process_first():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from side_by_side import pooled

    rows = [{"run": "ours", "step_times": [9.0, 2.0, 4.0], "s_per_step": 3.0, "gen_tokens_per_step": 10.0,
             "max_rss_gib": 1.5},
            {"run": "trl", "error": "boom"},
            {"run": "ours", "step_times": [9.0, 6.0, 8.0], "s_per_step": 7.0, "gen_tokens_per_step": 20.0,
             "max_rss_gib": 1.2}]
    ours, trl = pooled(rows)
    # the first step of each process is left out: median of 2, 4, 6, 8 is 5; tokens average to 15
    assert ours["s_per_step"] == 5.0 and ours["step_times"] == [2.0, 4.0, 6.0, 8.0]
    assert ours["repeat_s_per_step"] == [3.0, 7.0] and ours["repeats"] == 2
    assert ours["gen_tokens_per_step"] == 15.0 and ours["gen_tokens_per_s"] == 3.0 and ours["max_rss_gib"] == 1.5
    assert trl == {"run": "trl", "error": "boom"}  # a side that never ran keeps its error
