"""Each rank samples from its own stream, derived reproducibly from the shared seed."""
from __future__ import annotations

import torch

from lightning_trepo.training.run_state import decorrelate_rank_rng


def _draws(rank: int, world_size: int) -> torch.Tensor:
    torch.manual_seed(123)  # Lightning seeds every rank alike
    decorrelate_rank_rng(rank, world_size)
    return torch.rand(4)


def test_ranks_draw_different_but_reproducible_numbers():
    assert not torch.equal(_draws(0, 2), _draws(1, 2))
    assert torch.equal(_draws(1, 2), _draws(1, 2))


def test_single_process_stream_is_untouched():
    torch.manual_seed(123)
    expected = torch.rand(4)
    assert torch.equal(_draws(0, 1), expected)
