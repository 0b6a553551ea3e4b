"""REINFORCE, RLOO, ReMax and PPO each train 2 steps from their shipped config through the console script.

The console script's own function (``lightning-trepo`` = ``python -m lightning_trepo`` =
``lightning_trepo.cli.main:main``) runs in-process: a subprocess per algorithm would spend most of its time
re-importing torch/transformers; tests/cli/test_main.py covers the ``python -m`` subprocess path itself.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from lightning_trepo.cli.main import main

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


def test_algorithm_configs_state_only_what_differs_from_base():
    # every shared setting lives in configs/base.yaml; an algorithm config names its class and its own settings
    import inspect

    import lightning_trepo
    from lightning_trepo.modules.base import RLModule

    shared = set(inspect.signature(RLModule.__init__).parameters) - {"self"}
    for name, cls_name in {**ALGOS, "grpo": "GRPO", "trepo": "TRePO"}.items():
        cfg = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
        assert set(cfg) == {"model"} and cfg["model"]["class_path"] == f"lightning_trepo.{cls_name}", name
        own = set(inspect.signature(getattr(lightning_trepo, cls_name).__init__).parameters) - shared - {"self"}
        extra = set(cfg["model"].get("init_args", {})) - own
        assert extra <= {"update"}, (name, extra)  # PPO's epochs/minibatches/KL are algorithm choices


def test_base_comes_first_and_every_later_config_or_flag_overrides_it(tmp_path):
    from tests.cli.test_main import cli_parse_only

    trepo = str(ROOT / "configs" / "trepo.yaml")
    base = yaml.safe_load((ROOT / "configs" / "base.yaml").read_text())
    cfg = cli_parse_only(["--config", trepo])
    assert cfg.model.class_path == "lightning_trepo.TRePO" and cfg.model.init_args.num_anchors == 2
    assert cfg.trainer.max_steps == base["trainer"]["max_steps"]  # from base.yaml
    assert cfg.model.init_args.rollout.group_size == base["model"]["init_args"]["rollout"]["group_size"]
    overlay = tmp_path / "mine.yaml"
    overlay.write_text("data:\n  batch_size: 3\n")
    cfg = cli_parse_only(["--config", trepo, "--config", str(overlay), "--trainer.max_steps", "7"])
    assert (cfg.data.batch_size, cfg.trainer.max_steps, cfg.data.max_prompt_length) == (3, 7, 64)


@pytest.mark.parametrize("cls_name", ["REINFORCE", "RLOO", "ReMax", "GRPO", "PPO", "TRePO"])
def test_every_algorithm_signature_starts_with_rlmodules(cls_name):
    # the typed __init__ prefixes the algorithm modules repeat (they are the YAML schema) must stay RLModule's own:
    # same names, order, kinds, annotations and defaults
    import inspect

    import lightning_trepo
    from lightning_trepo.modules.base import RLModule

    def described(cls: type) -> list[tuple]:
        params = inspect.signature(cls.__init__).parameters.values()
        return [(p.name, p.kind, str(p.annotation), p.default) for p in params]

    base = described(RLModule)
    assert described(getattr(lightning_trepo, cls_name))[:len(base)] == base
