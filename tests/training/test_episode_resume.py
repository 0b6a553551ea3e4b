"""kill -9 in the middle of an episode, then ``--ckpt_path last``: the same weights as the uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from tests.training.test_checkpoints import LENGTH_REWARD, fit_console

ROOT = Path(__file__).resolve().parents[2]


def _console(tmp_path: Path, save_dir: str, kill_at: int = 0, *extra: str) -> subprocess.CompletedProcess:
    # 2 prompts x 2 samples = 4 episodes a step, each exactly 2 turns (4 + 6 + 4 tokens < 24): 8 env steps a step
    env = {"class_path": "tests.envs.scripted.KillingScripted", "init_args": {"turns": 2, "kill_at": kill_at}}
    return fit_console(tmp_path, save_dir, {
        "crash_safety": {"every_n_steps": 2},
        "model": {"init_args": {"reward": LENGTH_REWARD, "environment": env, "rollout": {
            "sampling": {"max_new_tokens": 4}, "episode": {"max_turns": 3, "max_total_tokens": 24}}}}}, *extra)


@pytest.mark.slow
def test_kill_9_mid_episode_then_resume_equals_the_uninterrupted_run(tmp_path):
    straight = _console(tmp_path, "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = _console(tmp_path, "crash", 4 * 8 + 5)  # the 5th env step of step 5: its episodes are half played
    assert killed.returncode == -signal.SIGKILL
    ckpts = tmp_path / "crash" / "lightning_trepo" / "version_0" / "checkpoints"
    assert sorted(os.listdir(ckpts)) == ["last.ckpt", "step=000002.ckpt", "step=000004.ckpt"]
    resumed = _console(tmp_path, "crash", 0, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    load = lambda p: torch.load(p, weights_only=False, map_location="cpu")  # noqa: E731
    want = load(tmp_path / "straight" / "lightning_trepo" / "version_0" / "checkpoints" / "last.ckpt")
    got = load(tmp_path / "crash" / "lightning_trepo" / "version_1" / "checkpoints" / "last.ckpt")
    assert got["global_step"] == want["global_step"] == 6
    early = load(ckpts / "step=000002.ckpt")["state_dict"]
    assert max(float((early[k] - v).abs().max()) for k, v in want["state_dict"].items()) > 1e-4  # it did learn
    for k, v in want["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][k], v, atol=1e-6, rtol=1e-5)
