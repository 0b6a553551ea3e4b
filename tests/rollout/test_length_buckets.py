"""Length-bucketed log-prob passes: whole groups, each bucket padded only to its own longest completion, the same
log-probs, entropy and gradients as one forward padded to the longest row."""
from __future__ import annotations

import pytest
import torch

from lightning_trepo.modules.config import UpdateConfig
from lightning_trepo.rollout.decoding import cache_argument
from lightning_trepo.rollout.logprobs import length_buckets, sequence_logprobs
from tests.rollout.test_shared_prompt_pass import _batch, _gpt2, _llama


def test_one_long_group_gets_its_own_bucket():
    # groups 0 and 2 (rows 0, 1, 4, 5) are 3 tokens long at most, group 1 (rows 2, 3) reaches 40.
    # one pass: 6 rows x 40 = 240 padded tokens; split: 2 x 40 + 4 x 3 = 92, a 62% saving, so it is kept
    lengths = torch.tensor([3, 2, 40, 5, 1, 3])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    buckets = length_buckets(lengths, groups, max_buckets=3)
    assert [b.tolist() for b in buckets] == [[2, 3], [0, 1, 4, 5]]  # longest first; a third cut saves nothing


def test_three_buckets_when_three_lengths_differ_a_lot():
    # groups of 2 rows with longest 40, 20, 5: one pass 6 x 40 = 240; two buckets at best 2x40 + 4x20 = 160;
    # three: 80 + 40 + 10 = 130, the least
    lengths = torch.tensor([5, 40, 20, 1, 4, 2])
    groups = torch.tensor([2, 0, 1, 1, 2, 0])
    buckets = length_buckets(lengths, groups, max_buckets=3)
    assert [sorted(b.tolist()) for b in buckets] == [[1, 5], [2, 3], [0, 4]]
    assert [sorted(b.tolist()) for b in length_buckets(lengths, groups, max_buckets=2)] == [[1, 5], [0, 2, 3, 4]]


def test_no_split_when_it_saves_under_a_tenth_or_only_one_is_allowed():
    lengths = torch.tensor([10, 10, 9, 9])  # split 2x10 + 2x9 = 38 against 40: 5% saved, not worth a pass
    groups = torch.tensor([0, 0, 1, 1])
    assert [b.tolist() for b in length_buckets(lengths, groups, max_buckets=3)] == [[0, 1, 2, 3]]
    assert [b.tolist() for b in length_buckets(torch.tensor([1, 50]), torch.tensor([0, 1]), 1)] == [[0, 1]]


def test_a_group_is_never_split():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        n = int(torch.randint(2, 12, (1,), generator=gen))
        lengths = torch.randint(1, 30, (n,), generator=gen)
        groups = torch.randint(0, 4, (n,), generator=gen)
        buckets = length_buckets(lengths, groups, max_buckets=3)
        assert sorted(torch.cat(buckets).tolist()) == list(range(n))  # every row exactly once
        owner = {}
        for b, rows in enumerate(buckets):
            for r in rows.tolist():
                assert owner.setdefault(int(groups[r]), b) == b
        padded = sum(len(rows) * int(lengths[rows].max()) for rows in buckets)
        assert padded <= n * int(lengths.max())  # never more padded tokens than one pass


@pytest.mark.parametrize("build", [_gpt2, _llama], ids=["gpt2", "llama"])
@pytest.mark.parametrize("shared", [False, True], ids=["plain", "shared-prompt"])
def test_bucketed_pass_equals_one_padded_pass(build, shared):
    model = build()
    prompt_ids, prompt_mask, completions, completion_mask = _batch()
    completion_mask[[0, 5], 2:] = 0  # prompt 0's rows end early, so bucketing pays
    upstream = torch.randn(8, 7, generator=torch.Generator().manual_seed(3))
    cache_kw = cache_argument(model) if shared else None
    results, shapes = [], []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape)))
    for buckets in (1, 3):
        shapes.clear()
        model.zero_grad()
        logprobs, entropy = sequence_logprobs(model, prompt_ids, prompt_mask, completions, completion_mask,
                                              temperature=0.9, with_entropy=True, prompt_cache_kw=cache_kw,
                                              max_buckets=buckets)
        (logprobs * upstream).sum().backward()
        results.append((logprobs.detach(), entropy, {n: p.grad.clone() for n, p in model.named_parameters()},
                        list(shapes)))
    hook.remove()
    (plain, plain_ent, plain_grads, one), (bucketed, ent, grads, many) = results
    assert len(many) > len(one)  # it really ran in buckets
    assert (bucketed != 0).sum() == completion_mask.sum() and bucketed.shape == plain.shape
    torch.testing.assert_close(bucketed, plain, atol=2e-6, rtol=0)
    real = completion_mask.bool()  # entropy is a metric over real tokens (masked_mean); padding has none
    torch.testing.assert_close(ent[real], plain_ent[real], atol=2e-6, rtol=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_the_module_buckets_unless_told_not_to():
    from lightning_trepo import GRPO
    from reward_models import FunctionReward
    from tests.helpers import TINY

    m = GRPO(reward=FunctionReward("tests.modules.rewards.length_reward"), policy=TINY, update=UpdateConfig())
    m.configure_model()
    assert m.length_buckets() == 3
    with pytest.raises(ValueError, match="update.length_buckets"):
        UpdateConfig(length_buckets=0)
