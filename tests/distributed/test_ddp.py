"""DDP on 2 gloo ranks: replicas stay identical, and 2 ranks x B prompts == 1 rank x 2B prompts."""
from __future__ import annotations

import pytest
import torch

from lightning_trepo.policy import load_policy
from tests.distributed.conftest import load
from tests.distributed.workers import PER_RANK_BATCH, train_ddp
from tests.helpers import TINY

pytestmark = pytest.mark.distributed


def test_ranks_hold_identical_weights(ddp_run):
    r0, r1 = (torch.load(ddp_run / f"ddp_rank{r}.pt") for r in range(2))
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # DDP all-reduces gradients: bitwise-equal replicas


def test_two_ranks_of_b_equal_one_rank_of_2b(ddp_run):
    # Data: each epoch's permutation is shared by all ranks and rank r takes perm[r::2], so batch b of rank 0
    # and of rank 1 together are perm[2bB : 2(b+1)B], exactly batch b of a 1-rank run with 2B prompts.
    # Rollouts: SeededEngine samples each completion from a generator seeded by (prompt, sample index), so
    # both runs draw the same G samples per prompt. Loss: seq_mean_token_mean is a mean over sequences; DDP
    # averages the two ranks' gradients of their means over B*G sequences = the gradient of the mean over
    # 2B*G sequences. Clipping then sees the same global norm, and SGD makes the same step, STEPS times.
    two = torch.load(ddp_run / "ddp_rank0.pt")
    one, _, _ = train_ddp(world=1, batch_size=2 * PER_RANK_BATCH)
    init = load_policy(TINY)[0].state_dict()
    assert max((one[k] - init[k]).abs().max().item() for k in one) > 1e-3  # the update is not trivially zero
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-6, rtol=1e-5)


def test_metrics_are_reduced_across_ranks(ddp_run):
    ranks = load(ddp_run, "ddp")
    assert ranks[0]["world_size"] == 2 and not ranks[0]["params_sharded"] and not ranks[0]["synced_gpus"]
    local = [r["local"] for r in ranks]
    assert local[0]["reward/total"] != local[1]["reward/total"]  # different prompts per rank
    for key in ("reward/total", "completion/length_mean", "loss/policy", "entropy"):
        mean = (local[0][key] + local[1][key]) / 2
        for r in ranks:
            assert r["synced"][key] == pytest.approx(mean, rel=1e-5, abs=1e-7), key  # sync_dist mean
    for key in ("ratio_max", "completion/length_max"):
        for r in ranks:
            assert r["synced"][key] == pytest.approx(max(local[0][key], local[1][key]), rel=1e-6), key  # max
