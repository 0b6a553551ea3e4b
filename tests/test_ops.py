"""ops.py directly: entropy at a temperature and masked whitening, against hand-derived values."""
from __future__ import annotations

import math

import torch

from lightning_trepo.ops import entropy_from_logits, masked_mean, masked_sum, masked_whiten


def test_entropy_of_uniform_and_of_a_tempered_two_point_distribution():
    # four equal logits: H = ln 4 (at any temperature)
    torch.testing.assert_close(entropy_from_logits(torch.zeros(4)), torch.tensor(math.log(4)))
    torch.testing.assert_close(entropy_from_logits(torch.zeros(4), temperature=0.3), torch.tensor(math.log(4)))
    # logits [0, 2 ln 3] at T = 2 are [0, ln 3]: probabilities 1/4, 3/4,
    # H = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.5623351446...
    logits = torch.tensor([[0.0, 2 * math.log(3)]])
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    torch.testing.assert_close(entropy_from_logits(logits, temperature=2.0), torch.tensor([expected]),
                               rtol=0, atol=1e-6)
    # at T = 1 the same logits are 1/10, 9/10: a lower entropy
    low = -(0.1 * math.log(0.1) + 0.9 * math.log(0.9))
    torch.testing.assert_close(entropy_from_logits(logits), torch.tensor([low]), rtol=0, atol=1e-6)


def test_entropy_keeps_leading_dimensions_and_reads_bf16_in_float32():
    logits = torch.zeros(2, 3, 5, dtype=torch.bfloat16)
    out = entropy_from_logits(logits)
    assert out.shape == (2, 3) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.full((2, 3), math.log(5)))


def test_masked_whiten_uses_only_real_entries_and_zeroes_the_rest():
    x = torch.tensor([[1.0, 2.0, 3.0], [5.0, 100.0, -40.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # real entries 1, 2, 3, 5: mean 2.75; sample variance (1.75² + 0.75² + 0.25² + 2.25²) / (4 - 1) = 8.75 / 3
    # (verl's masked_whiten and TRL's whiten divide by n - 1)
    std = math.sqrt(8.75 / 3)
    expected = torch.tensor([[(1 - 2.75) / std, (2 - 2.75) / std, (3 - 2.75) / std], [(5 - 2.75) / std, 0.0, 0.0]])
    torch.testing.assert_close(masked_whiten(x, mask), expected, rtol=0, atol=1e-6)
    # shift_mean=False scales only: the mean comes back on the real entries, padding stays 0
    torch.testing.assert_close(masked_whiten(x, mask, shift_mean=False), (expected + 2.75) * mask, rtol=0, atol=1e-6)
    # unbiased=False: the population variance 8.75 / 4
    population = expected * math.sqrt(8.75 / 3) / math.sqrt(8.75 / 4)
    torch.testing.assert_close(masked_whiten(x, mask, unbiased=False), population * mask, rtol=0, atol=1e-6)


def test_masked_sum_and_mean_ignore_nan_padding_in_value_and_gradient():
    x = torch.tensor([[1.0, float("nan")], [2.0, float("inf")]], requires_grad=True)
    mask = torch.tensor([[1, 0], [1, 0]])
    # real entries 1 and 2: sum 3, mean 1.5; d(sum)/dx = mask, exactly 0 (not NaN) on the padding
    assert masked_sum(x, mask).item() == 3.0 and masked_mean(x, mask).item() == 1.5
    masked_mean(x, mask).backward()
    assert torch.equal(x.grad, torch.tensor([[0.5, 0.0], [0.5, 0.0]]))
    # whitening: mean 1.5, sample variance 0.5, so ∓0.5 / sqrt(0.5 + 1e-8); padding 0
    expected = torch.tensor([[-0.5, 0.0], [0.5, 0.0]]) / math.sqrt(0.5 + 1e-8)
    torch.testing.assert_close(masked_whiten(x.detach(), mask), expected, rtol=0, atol=1e-6)


def test_masked_whiten_is_invariant_to_shift_and_positive_scale_of_the_input():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, generator=gen)
    mask = (torch.rand(3, 7, generator=gen) > 0.3).long()
    torch.testing.assert_close(masked_whiten(3.0 * x + 11.0, mask), masked_whiten(x, mask), rtol=0, atol=1e-5)
