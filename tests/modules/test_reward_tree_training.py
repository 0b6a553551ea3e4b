"""GRPO and TRePO train with a nested YAML reward tree and log every node of it."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from lightning_trepo.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
TREE = Path(__file__).parent / "data" / "nested_reward.yaml"
NODES = ("reward/total", "reward/correct", "reward/correct/gate", "reward/correct/inner", "reward/length")


@pytest.mark.parametrize("algo", ["grpo", "trepo"])
def test_nested_tree_trains_and_logs_every_component(algo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(ROOT / "configs" / f"{algo}.yaml"), "--model.init_args.reward", str(TREE),
          "--model.init_args.policy.model_path", "null", "--trainer.max_steps", "2",
          "--model.init_args.rollout.group_size", "2", "--data.batch_size", "2", "--data.val_source", "null",
          "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false",
          "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")])
    rows = list(csv.DictReader(open(next((tmp_path / "runs").rglob("metrics.csv")))))
    header = set(rows[0])
    for node in NODES:
        assert node in header and f"{node}_std" in header, node
    # the logged total is the weighted sum of its logged children: correct + 0.5 * length (means are linear)
    for row in rows:
        if row["reward/total"]:
            total = float(row["reward/total"])
            assert abs(total - (float(row["reward/correct"]) + 0.5 * float(row["reward/length"]))) < 1e-5
