"""The console script with a recipe overlay: TRePO + recipes/ddp.yaml on 2 CPU processes (gloo).

Lightning's own launcher starts the second rank by re-running the same command line."""
from __future__ import annotations

import sys

import pytest

from tests.distributed.launch import ROOT, base_env, run_command

pytestmark = pytest.mark.distributed
CONFIG = ROOT / "configs" / "trepo.yaml"


def test_trepo_with_ddp_recipe_trains_on_two_cpu_processes(tmp_path):
    random_tiny = tmp_path / "random_tiny.yaml"  # the built-in random tiny model: fast, needs no shipped weights
    random_tiny.write_text("model:\n  init_args:\n    policy:\n      model_path: null\n"
                           "data:\n  val_source:\n    class_path: lightning_trepo.data.BuiltinTaskSource\n"
                           "    init_args: {split: test, size: 16}\n")
    cmd = [sys.executable, "-m", "lightning_trepo", "fit", "--config", str(CONFIG),
           "--config", str(ROOT / "recipes" / "ddp.yaml"),
           "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.max_steps", "2",
           "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1", "--data.val_batch_size", "4",
           "--model.init_args.rollout.group_size", "2", "--data.batch_size", "2", "--config", str(random_tiny),
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
    assert list((tmp_path / "runs").rglob("*.ckpt")), "the DDP run leaves a checkpoint"
