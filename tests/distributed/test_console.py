"""The console script with a recipe overlay: TRePO + recipes/ddp.yaml on 2 CPU processes (gloo).

Lightning's own launcher starts the second rank by re-running the same command line."""
from __future__ import annotations

import json
import sys

import pytest
import torch

from lightning_trepo.tools.plots import read_metrics
from tests.distributed.launch import ROOT, base_env, run_command

pytestmark = pytest.mark.distributed
CONFIG = ROOT / "configs" / "trepo.yaml"


def test_trepo_with_ddp_recipe_trains_on_two_cpu_processes(tmp_path):
    small_val = tmp_path / "small_val.yaml"  # 16 held-out prompts; the shipped tiny model, whose rewards vary
    small_val.write_text("data:\n  val_source:\n    class_path: lightning_trepo.data.BuiltinTaskSource\n"
                         "    init_args: {split: test, size: 16}\n")
    rollouts = tmp_path / "rollouts.jsonl"  # rank 0 writes its own rows
    cmd = [sys.executable, "-m", "lightning_trepo", "fit", "--config", str(CONFIG),
           "--config", str(ROOT / "recipes" / "ddp.yaml"),
           "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.max_steps", "2",
           "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1", "--data.val_batch_size", "4",
           "--model.init_args.rollout.group_size", "2", "--data.batch_size", "2", "--config", str(small_val),
           "--model.init_args.rollout.log_path", str(rollouts),
           "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    res = run_command(cmd, timeout=240, cwd=tmp_path, env=base_env())
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "Starting with 2 processes" in out and "MEMBER: 2/2" in out
    metrics = list((tmp_path / "runs").rglob("metrics.csv"))
    assert metrics, "rank 0 writes the CSV log"
    header = metrics[0].read_text().splitlines()[0]
    assert "reward/total" in header and "val/accuracy" in header
    assert any(k in header for k in ("trepo/", "continuation")), header  # it really was TRePO
    last = list((tmp_path / "runs").rglob("last.ckpt"))
    assert last and torch.load(last[0], map_location="cpu", weights_only=False)["global_step"] == 2
    # rank 0's rows, scored by hand from the operands: 2 steps x 2 prompts x 2 samples
    rows = [json.loads(line) for line in rollouts.read_text().splitlines()]
    assert [r["step"] for r in rows] == [0] * 4 + [1] * 4
    for r in rows:
        assert r["reward"] == float(r["completion"].strip() == str(sum(r["metadata"]["operands"])))
    # reward/total is the mean over both ranks (sync_dist): what it implies for rank 1 must be a mean of 4 binary
    # rewards
    logged = [r["reward/total"] for r in read_metrics(metrics[0]) if "reward/total" in r]
    assert len(logged) == 2
    for step, total in enumerate(logged):
        rank0 = sum(r["reward"] for r in rows if r["step"] == step) / 4
        rank1 = 2 * total - rank0
        assert 0 <= rank1 <= 1 and abs(rank1 * 4 - round(rank1 * 4)) < 1e-5, (step, total, rank0)
    accuracy = [r["val/accuracy"] for r in read_metrics(metrics[0]) if "val/accuracy" in r]
    assert len(accuracy) == 1 and abs(accuracy[0] * 8 - round(accuracy[0] * 8)) < 1e-5  # 4 greedy prompts a rank
