"""Watching and steering a run: lr schedule with warmup, TensorBoard / W&B overlays with LearningRateMonitor and
ModelCheckpoint, a progress bar in steps of max_steps, the thinned console line, and --help."""
from __future__ import annotations

import importlib.util
import logging
import math
from pathlib import Path

import pytest

from lightning_trepo.cli.main import build_cli, main
from lightning_trepo.training.callbacks import StepProgressBar
from lightning_trepo.training.schedule import LRScheduleConfig, lr_factor

ROOT = Path(__file__).resolve().parents[2]
LR = 0.0002  # configs/grpo.yaml's AdamW lr
# 4 optimizer steps, validation (4 greedy prompts) after steps 2 and 4
SMALL = ["--trainer.max_steps", "4", "--model.init_args.rollout.group_size", "2", "--data.batch_size", "2",
         "--trainer.val_check_interval", "2", "--data.val_source.init_args.size", "4", "--data.val_batch_size", "4",
         "--model.init_args.rollout.val_num_samples", "0"]


@pytest.mark.parametrize("decay, step, expected", [
    ("cosine", 0, 0.0), ("cosine", 2, 0.5), ("cosine", 4, 1.0),  # warmup 4: step / 4
    # after warmup p = (step - 4) / (12 - 4); factor = 0.1 + 0.9 * d(p)
    ("cosine", 6, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))),  # p = 1/4: 0.868198
    ("cosine", 8, 0.55), ("cosine", 12, 0.1), ("cosine", 30, 0.1),  # p = 1/2 -> d = 1/2; p >= 1 -> floor
    ("linear", 6, 0.1 + 0.9 * 0.75), ("linear", 8, 0.55), ("linear", 12, 0.1),
    ("constant", 2, 0.5), ("constant", 50, 1.0),
])
def test_lr_factor_hand_derived(decay, step, expected):
    cfg = LRScheduleConfig(warmup_steps=4, decay=decay, min_lr_ratio=0.1)
    assert lr_factor(step, cfg, total_steps=12) == pytest.approx(expected, abs=1e-12)


def test_lr_schedule_rejects_bad_values():
    with pytest.raises(ValueError, match="lr_scheduler.min_lr_ratio"):
        LRScheduleConfig(min_lr_ratio=1.5)
    with pytest.raises(ValueError, match="lr_scheduler.warmup_steps"):
        LRScheduleConfig(warmup_steps=-1)


def fit(tmp_path: Path, overlay: str, *extra: str):
    return build_cli(["fit", "--config", str(ROOT / "configs" / "grpo.yaml"), "--config",
                      str(ROOT / "configs" / "watch" / overlay), *SMALL,
                      "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), *extra])


@pytest.mark.slow  # 4 steps + 2 validations through the CLI (~8 s on a free core)
@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="needs the `tensorboard` extra")
def test_tensorboard_overlay_logs_the_scheduled_lr_and_keeps_the_best_checkpoints(tmp_path, monkeypatch, caplog):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO):
        cli = fit(tmp_path, "tensorboard.yaml", "--lr_scheduler.warmup_steps", "2", "--lr_scheduler.decay", "linear",
                  "--lr_scheduler.min_lr_ratio", "0", "--step_printer.every_n_steps", "2")
    # warmup 2 then linear to 0 at max_steps 4; LearningRateMonitor logs the lr each step is taken with:
    # step 0: 0/2, step 1: 1/2, step 2: p=0 -> 1, step 3: p=(3-2)/(4-2) -> 1/2
    events = EventAccumulator(str(Path(cli.trainer.logger.log_dir))).Reload()
    lrs = [(e.step, e.value) for e in events.Scalars("lr-AdamW")]
    assert [s for s, _ in lrs] == [0, 1, 2, 3]
    assert [v for _, v in lrs] == pytest.approx([0.0, LR / 2, LR, LR / 2], rel=1e-6)
    assert "reward/total" in events.Tags()["scalars"] and "val/accuracy" in events.Tags()["scalars"]
    # the overlay's ModelCheckpoint keeps the best 2 of the 2 validations; the CLI's own crash-safety checkpoint
    # (every 10 steps: here only the final one, with last.ckpt) is still there, though the overlay set the list
    ckpts = sorted(p.name for p in Path(cli.trainer.checkpoint_callback.dirpath).iterdir())
    assert ckpts == ["best-step=2.ckpt", "best-step=4.ckpt", "last.ckpt", "step=000004.ckpt"]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [int(line.split("|")[0].split()[1]) for line in lines] == [2, 4]  # every_n_steps: 2


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="needs the `wandb` extra")
def test_wandb_overlay_runs_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "runs"))
    cli = fit(tmp_path, "wandb.yaml", "--trainer.max_steps", "2", "--lr_scheduler.warmup_steps", "1")
    cli.trainer.logger.experiment.finish()
    runs = list((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), "an offline run file to `wandb sync` later"


def test_progress_bar_counts_steps_of_max_steps_and_printer_can_be_off(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO):
        cli = build_cli(["fit", "--config", str(ROOT / "configs" / "grpo.yaml"), *SMALL, "--trainer.logger", "false",
                         "--trainer.enable_checkpointing", "false", "--step_printer.every_n_steps", "0"])
    (bar,) = [c for c in cli.trainer.callbacks if isinstance(c, StepProgressBar)]
    task = bar.progress.tasks[bar.train_progress_bar_id]
    assert (task.completed, task.total) == (4, 4)  # optimizer steps of max_steps, not batches of an epoch
    assert "/-2" not in task.description and "epoch 0" in task.description
    assert not [r for r in caplog.records if r.getMessage().startswith("step ")]


def test_help_lists_fit_validate_and_tools_and_no_crashing_subcommand(capsys):
    with pytest.raises(SystemExit) as code:
        main(["--help"])
    out = capsys.readouterr().out
    assert code.value.code == 0 and "{fit,validate}" in out and "predict" not in out
    for name in ("export", "score", "serve-reward", "verify-estimators"):
        assert f"\n  {name} " in out  # the tool commands, under the subcommands
    with pytest.raises(SystemExit) as code:
        main(["test"])
    assert code.value.code != 0 and "invalid choice: 'test'" in capsys.readouterr().err


def test_validate_subcommand_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # reward 1 iff the row's answer is even: the 4 held-out prompts (answers 136, 141, 20, 181) give accuracy 2/4
    reward = ('{"class_path": "reward_models.FunctionReward", '
              '"init_args": {"fn": "tests.modules.rewards.answer_is_even"}}')
    cli = build_cli(["validate", "--config", str(ROOT / "configs" / "grpo.yaml"), *SMALL, "--trainer.logger", "false",
                     "--model.init_args.reward", reward])
    assert float(cli.trainer.callback_metrics["val/accuracy"]) == 0.5
