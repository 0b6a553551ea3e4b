"""REINFORCE, RLOO, ReMax and PPO each train 2 steps from their shipped config through the console script.

The console script's own function (``lightning-trepo`` = ``python -m lightning_trepo`` =
``lightning_trepo.cli:main``) runs in-process: a subprocess per algorithm would spend most of its time
re-importing torch/transformers; tests/test_cli.py covers the ``python -m`` subprocess path itself.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from lightning_trepo.cli import main

ROOT = Path(__file__).resolve().parents[2]
ALGOS = {"reinforce": "REINFORCE", "rloo": "RLOO", "remax": "ReMax", "ppo": "PPO"}


@pytest.mark.parametrize("name", sorted(ALGOS))
def test_config_trains_two_steps_through_console_script(name, tmp_path, monkeypatch, caplog):
    config = ROOT / "configs" / f"{name}.yaml"
    assert yaml.safe_load(config.read_text())["model"]["class_path"] == f"lightning_trepo.{ALGOS[name]}"
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)  # the CLI's StepPrinter reports each optimizer step through logging
    main(["fit", "--config", str(config), "--trainer.max_steps", "2", "--model.init_args.rollout.group_size", "2",
          "--data.batch_size", "2", "--trainer.logger", "false"])
    assert "step     2 | reward/total=" in caplog.text


def test_configs_share_every_base_key_with_grpo():
    # swapping model.class_path must be all a user changes: the shared init_args have the same names and values
    grpo = yaml.safe_load((ROOT / "configs" / "grpo.yaml").read_text())
    for name in ALGOS:
        cfg = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
        assert cfg["data"] == grpo["data"] and cfg["trainer"] == grpo["trainer"], name
        for key in ("reward", "policy", "rollout", "optimizer"):
            assert cfg["model"]["init_args"][key] == grpo["model"]["init_args"][key], (name, key)
        assert cfg["model"]["init_args"]["update"].keys() == grpo["model"]["init_args"]["update"].keys(), name
