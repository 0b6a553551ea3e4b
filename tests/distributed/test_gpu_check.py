"""benchmarks/gpu_check.py imports without a GPU and its --dry-run trains on the CPU (tiny model)."""
from __future__ import annotations

import json
import sys

import pytest

from tests.distributed.launch import ROOT, base_env, run_command

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # a subprocess that trains twice: ~1 min


def test_gpu_check_dry_run_trains_zero2_and_fsdp2(tmp_path):
    # one run per strategy and per algorithm (the full dry run does all four pairs, ~1 min on 2 cores)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--only", "zero2:trepo",
           "fsdp2:grpo", "--json", str(tmp_path / "r.json")]
    res = run_command(cmd, timeout=240, cwd=ROOT, env=base_env())
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    rows = {r["run"]: r for r in json.loads((tmp_path / "r.json").read_text())}
    assert set(rows) == {"zero2:trepo", "fsdp2:grpo"}
    for r in rows.values():
        assert r["steps"] == 2 and r["tokens_per_s"] > 0 and r["s_per_step"] > 0
    assert "tok/s" in res.stdout and "peak GiB" in res.stdout
