"""A 2-process run resumed from a mid-run checkpoint equals the uninterrupted 2-process run."""
from __future__ import annotations

import pytest
import torch

import lightning_trepo.modules.config  # noqa: F401  (registers the config classes a checkpoint holds as torch.load safe globals)
from tests.distributed.conftest import TIMEOUT
from tests.distributed.launch import check, launch

pytestmark = pytest.mark.distributed


def test_two_rank_resume_equals_the_uninterrupted_run(tmp_path):
    check(launch(["-m", "tests.distributed.resume_worker", str(tmp_path)], nprocs=2, timeout=TIMEOUT,
                 logdir=tmp_path / "logs"))
    ckpt = torch.load(tmp_path / "killed" / "step=000002.ckpt", weights_only=True, map_location="cpu")
    states = ckpt["lightning_trepo"]["rank_states"]
    assert len(states) == 2  # every rank's state, gathered to rank 0's file
    assert not torch.equal(states[0]["rng"]["torch"], states[1]["rng"]["torch"])  # ranks sample different streams
    assert states[0]["reward"] != states[1]["reward"]  # and keep their own running reward statistics
    for rank in range(2):
        straight = torch.load(tmp_path / f"straight_rank{rank}.pt", weights_only=True)
        resumed = torch.load(tmp_path / f"resumed_rank{rank}.pt", weights_only=True)
        for k, v in straight["params"].items():
            torch.testing.assert_close(resumed["params"][k], v, atol=1e-6, rtol=1e-5)
        assert resumed["reward"] == straight["reward"]  # count, mean and M2 of this rank continue exactly
