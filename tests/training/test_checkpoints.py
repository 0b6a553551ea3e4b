"""Nothing lost to a crash: periodic atomic checkpoints, exact resume from one, refusal of foreign or broken files,
and non-finite updates that never reach the weights."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

from lightning_trepo import GRPO, RLOO
from lightning_trepo.errors import InputError, TrainingHalted
from lightning_trepo.training.callbacks import NonFiniteGuard
from lightning_trepo.training.checkpoints import PeriodicCheckpoint, check_readable
from reward_models import FunctionReward, Normalize
from tests.helpers import TINY, datamodule, policy_params, rollout_cfg, trainer

ROOT = Path(__file__).resolve().parents[2]


def grpo(group_size: int = 2, cls=GRPO, **kw) -> GRPO:
    # Normalize(running) keeps reward statistics across steps: resume must bring them back too
    reward = Normalize(FunctionReward("tests.modules.rewards.length_reward"), mode="running")
    return cls(reward=reward, policy=TINY, rollout=rollout_cfg(group_size=group_size),
               optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2), **kw)


def fit(root: Path, max_steps: int, module: GRPO | None = None, ckpt_path: str | None = None, every: int = 2,
        keep: int = 2, callbacks=()) -> tuple[GRPO, PeriodicCheckpoint]:
    pl.seed_everything(3)
    module = module or grpo()
    periodic = PeriodicCheckpoint(every_n_steps=every, keep_last=keep, dirpath=str(root / "ckpt"))
    t = trainer(root, max_steps=max_steps, enable_checkpointing=True, callbacks=[periodic, *callbacks])
    t.fit(module, datamodule=datamodule(batch_size=2), ckpt_path=ckpt_path)
    return module, periodic


def test_periodic_checkpoints_keep_the_last_k_and_point_last_at_the_newest(tmp_path):
    module, periodic = fit(tmp_path, max_steps=7, every=2, keep=2)
    names = sorted(os.listdir(tmp_path / "ckpt"))
    # saves at steps 2, 4, 6 and the final step 7; the newest two are kept, no temporary file is left
    assert names == ["last.ckpt", "step=000006.ckpt", "step=000007.ckpt"]
    last = tmp_path / "ckpt" / "last.ckpt"
    assert os.path.realpath(last) == str(tmp_path / "ckpt" / "step=000007.ckpt")
    state = torch.load(last, weights_only=False, map_location="cpu")
    assert state["global_step"] == 7
    assert state["lightning_trepo"]["stamp"] == {"algorithm": "GRPO", "model_path": None, "group_size": 2}
    assert len(state["lightning_trepo"]["rank_states"]) == 1
    # the running reward statistics of the rank: 7 rollouts of 2 prompts x 2 samples = 28 values
    assert state["lightning_trepo"]["rank_states"][0]["reward"]["count"] == 28


def test_periodic_checkpoints_say_nothing_on_the_console(tmp_path):
    # Lightning logs "`weights_only` was not set, defaulting to `False`" for each save that does not say
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    lightning_log = logging.getLogger("lightning.pytorch.trainer.connectors.checkpoint_connector")
    level = lightning_log.level
    lightning_log.addHandler(handler)
    lightning_log.setLevel(logging.INFO)
    try:
        fit(tmp_path, max_steps=4, every=1, keep=2)  # 4 periodic saves
    finally:
        lightning_log.removeHandler(handler)
        lightning_log.setLevel(level)
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["last.ckpt", "step=000003.ckpt", "step=000004.ckpt"]
    assert [r.getMessage() for r in records if "weights_only" in r.getMessage()] == []


def test_resume_from_a_mid_run_periodic_checkpoint_equals_the_uninterrupted_run(tmp_path):
    straight, _ = fit(tmp_path / "a", max_steps=6, every=2, keep=5)
    fit(tmp_path / "b", max_steps=4, every=2, keep=5)  # "killed" after step 4: its newest checkpoint is step 4
    resumed, _ = fit(tmp_path / "c", max_steps=6, ckpt_path=str(tmp_path / "b" / "ckpt" / "step=000004.ckpt"))
    want, got = policy_params(straight), policy_params(resumed)
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-5)
    assert resumed.reward.state_dict() == straight.reward.state_dict()  # running mean/M2 continue exactly
    # the step-4 checkpoint of the straight run equals the one the "killed" run left (same state, same file content)
    a = torch.load(tmp_path / "a" / "ckpt" / "step=000004.ckpt", weights_only=False, map_location="cpu")
    b = torch.load(tmp_path / "b" / "ckpt" / "step=000004.ckpt", weights_only=False, map_location="cpu")
    assert torch.equal(a["lightning_trepo"]["rank_states"][0]["rng"]["torch"],
                       b["lightning_trepo"]["rank_states"][0]["rng"]["torch"])


class Killed(RuntimeError):
    """Stands in for SIGKILL in the middle of writing a checkpoint."""


def test_a_kill_during_the_write_leaves_the_previous_checkpoints_intact(tmp_path, monkeypatch):
    fit(tmp_path, max_steps=2, every=2, keep=3)
    before = (tmp_path / "ckpt" / "last.ckpt").read_bytes()
    calls = []

    def dies_while_writing(self, filepath, weights_only=False):  # writes half a file, then the process "dies"
        Path(filepath).write_bytes(b"PK\x03\x04 half a checkpoint")
        calls.append(filepath)
        raise Killed

    monkeypatch.setattr(pl.Trainer, "save_checkpoint", dies_while_writing)
    with pytest.raises(Killed):
        fit(tmp_path, max_steps=4, every=2, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert calls == [str(tmp_path / "ckpt" / "step=000004.ckpt.tmp")]  # only ever a temporary name
    assert (tmp_path / "ckpt" / "last.ckpt").read_bytes() == before
    assert not (tmp_path / "ckpt" / "step=000004.ckpt").exists()
    check_readable(str(tmp_path / "ckpt" / "last.ckpt"))


def test_ckpt_path_last_finds_the_newest_checkpoint_of_an_earlier_logger_version(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    def run(max_steps: int, ckpt_path=None) -> pl.Trainer:
        pl.seed_everything(3)
        t = trainer(tmp_path, max_steps=max_steps, enable_checkpointing=True, logger=CSVLogger(tmp_path, "run"),
                    callbacks=[PeriodicCheckpoint(every_n_steps=2)])
        t.fit(grpo(), datamodule=datamodule(batch_size=2), ckpt_path=ckpt_path)
        return t

    run(2)  # version_0 leaves step 2
    resumed = run(3, ckpt_path="last")  # version_1: starts from version_0's newest checkpoint
    assert resumed.ckpt_path == os.path.realpath(tmp_path / "run" / "version_0" / "checkpoints" / "step=000002.ckpt")
    assert resumed.global_step == 3


@pytest.mark.parametrize("other, mismatch", [
    (lambda: grpo(group_size=4), "group_size: checkpoint 2, this run 4"),
    (lambda: grpo(cls=RLOO), "algorithm: checkpoint 'GRPO', this run 'RLOO'"),
])
def test_checkpoint_of_another_run_is_refused_naming_the_mismatch(tmp_path, other, mismatch):
    fit(tmp_path, max_steps=2, every=2)
    with pytest.raises(InputError, match=mismatch):
        fit(tmp_path / "again", max_steps=3, module=other(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))


@pytest.mark.parametrize("keep_bytes", [0, 100, -100])
def test_truncated_checkpoint_is_refused_by_name(tmp_path, keep_bytes):
    fit(tmp_path, max_steps=2, every=2)
    good = (tmp_path / "ckpt" / "step=000002.ckpt").read_bytes()
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(good[:keep_bytes] if keep_bytes >= 0 else good[:len(good) + keep_bytes])
    with pytest.raises(InputError, match=r"broken\.ckpt.*(truncated|damaged)"):
        fit(tmp_path / "again", max_steps=3, ckpt_path=str(bad))


# ---------------------------------------------------------------------------------------------- non-finite updates
class PoisonedGRPO(GRPO):
    """Its loss is NaN at the listed global steps (and normal otherwise)."""

    poison_steps: tuple[int, ...] = ()

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step in self.poison_steps else loss


def test_nan_update_is_skipped_counted_and_the_weights_stay_finite(tmp_path):
    module = grpo(cls=PoisonedGRPO)
    module.poison_steps = (1,)  # the second optimizer step
    guard = NonFiniteGuard(max_consecutive=3)
    t = trainer(tmp_path, max_steps=3, callbacks=[guard], gradient_clip_val=1.0)  # clipping sees no gradient
    with pytest.warns(UserWarning, match="step 1: non-finite gradient, update skipped"):
        t.fit(module, datamodule=datamodule(batch_size=2))
    assert guard.skipped == 1 and guard.consecutive == 0
    assert float(t.callback_metrics["train/skipped_updates"]) == 1.0
    assert all(torch.isfinite(p).all() for p in module.policy.parameters())
    # the skipped step changed nothing: AdamW's step count is 2 (steps 0 and 2), not 3
    states = [s for s in t.optimizers[0].state.values() if "step" in s]
    assert states and all(int(s["step"]) == 2 for s in states)


def test_nan_skip_leaves_the_weights_exactly_as_before_the_step(tmp_path):
    clean = grpo(cls=PoisonedGRPO)
    pl.seed_everything(3)
    trainer(tmp_path / "a", max_steps=1).fit(clean, datamodule=datamodule(batch_size=2))
    poisoned = grpo(cls=PoisonedGRPO)
    poisoned.poison_steps = (1,)
    pl.seed_everything(3)
    with pytest.warns(UserWarning, match="non-finite"):
        trainer(tmp_path / "b", max_steps=2, callbacks=[NonFiniteGuard()]).fit(
            poisoned, datamodule=datamodule(batch_size=2)
        )
    for k, v in policy_params(clean).items():
        assert torch.equal(policy_params(poisoned)[k], v)  # step 1 was dropped entirely


def test_consecutive_non_finite_updates_stop_the_run_with_a_message(tmp_path):
    module = grpo(cls=PoisonedGRPO)
    module.poison_steps = tuple(range(1, 100))
    with pytest.warns(UserWarning), pytest.raises(TrainingHalted, match=r"2 consecutive updates.*max_consecutive=2"):
        trainer(tmp_path, max_steps=10, callbacks=[NonFiniteGuard(max_consecutive=2)]).fit(
            module, datamodule=datamodule(batch_size=2))
    assert math.isfinite(sum(float(p.sum()) for p in module.policy.parameters()))


# ---------------------------------------------------------------------------------------------- console script, kill -9
class KillAt(pl.Callback):
    """SIGKILLs its own process right after optimizer step ``step`` (no handler, no cleanup: a real crash)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def _console(tmp_path: Path, save_dir: str, *extra: str) -> subprocess.CompletedProcess:
    callbacks = []  # the periodic checkpoint is the CLI's own (crash_safety), whatever trainer.callbacks lists
    if "--kill" in extra:
        callbacks.append({"class_path": "tests.training.test_checkpoints.KillAt", "init_args": {"step": 5}})
        extra = tuple(e for e in extra if e != "--kill")
    return fit_console(tmp_path, save_dir, {"trainer": {"callbacks": callbacks}, "crash_safety": {"every_n_steps": 2},
                                            "model": {"init_args": {"reward": LENGTH_REWARD}}}, *extra)


LENGTH_REWARD = {"class_path": "reward_models.FunctionReward",
                 "init_args": {"fn": "tests.modules.rewards.length_reward"}}


def fit_console(tmp_path: Path, save_dir: str, overlay: dict, *extra: str) -> subprocess.CompletedProcess:
    """``python -m lightning_trepo fit`` on grpo.yaml + ``overlay`` (written to ``<save_dir>.yaml``): the tiny model,
    6 steps, 2 prompts x 2 samples, no validation, logs under ``tmp_path / save_dir``; a process of its own."""
    path = tmp_path / f"{save_dir}.yaml"
    path.write_text(yaml.safe_dump(overlay))
    cmd = [sys.executable, "-m", "lightning_trepo", "fit", "--config", str(ROOT / "configs" / "grpo.yaml"),
           "--config", str(path), "--trainer.max_steps", "6", "--trainer.limit_val_batches", "0",
           "--model.init_args.policy.model_path", "null", "--model.init_args.rollout.group_size", "2",
           "--data.batch_size", "2", "--trainer.logger.init_args.save_dir", str(tmp_path / save_dir), *extra]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
def test_kill_9_then_ckpt_path_last_equals_the_uninterrupted_run(tmp_path):
    assert _console(tmp_path, "straight").returncode == 0
    killed = _console(tmp_path, "crash", "--kill")
    assert killed.returncode == -signal.SIGKILL  # died after step 5; its newest checkpoint is step 4
    ckpts = tmp_path / "crash" / "lightning_trepo" / "version_0" / "checkpoints"
    assert sorted(os.listdir(ckpts)) == ["last.ckpt", "step=000002.ckpt", "step=000004.ckpt"]
    resumed = _console(tmp_path, "crash", "--ckpt_path", "last")  # a new logger version finds version_0's last
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step=000004.ckpt" in resumed.stderr + resumed.stdout
    load = lambda p: torch.load(p, weights_only=False, map_location="cpu")  # noqa: E731
    want = load(tmp_path / "straight" / "lightning_trepo" / "version_0" / "checkpoints" / "last.ckpt")
    got = load(tmp_path / "crash" / "lightning_trepo" / "version_1" / "checkpoints" / "last.ckpt")
    assert got["global_step"] == want["global_step"] == 6
    early = load(ckpts / "step=000002.ckpt")["state_dict"]
    assert max(float((early[k] - v).abs().max()) for k, v in want["state_dict"].items()) > 1e-4  # it did learn
    for k, v in want["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][k], v, atol=1e-6, rtol=1e-5)


def test_console_refuses_a_checkpoint_of_another_group_size(tmp_path, capsys, monkeypatch):
    from lightning_trepo.cli.main import main

    fit(tmp_path, max_steps=2, every=2)  # group size 2, the built-in tiny model (model_path None)
    monkeypatch.setattr(sys, "argv", ["lightning-trepo"])
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs" / "grpo.yaml"), "--model.init_args.policy.model_path", "null",
              "--model.init_args.rollout.group_size", "4", "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "group_size: checkpoint 2, this run 4" in err and len(err.splitlines()) <= 4


def test_callback_settings_are_checked_with_their_key():
    from lightning_trepo.errors import ConfigError

    with pytest.raises(ConfigError, match=r"trainer.callbacks.PeriodicCheckpoint.every_n_steps = 0: accepted: an int"):
        PeriodicCheckpoint(every_n_steps=0)
    with pytest.raises(ConfigError, match=r"trainer.callbacks.NonFiniteGuard.max_consecutive = 0"):
        NonFiniteGuard(max_consecutive=0)
