"""The Rollout contract: select slices exactly the declared per-sample fields."""
import torch

from lightning_trepo.types import Rollout
from tests.helpers import tiny_rollout


def test_select_slices_per_sample_fields_and_keeps_rollout_level_ones():
    rollout = tiny_rollout([[1, 1], [1, 0], [1, 1], [1, 1]], group_size=2)
    rollout.advantages = torch.tensor([0.5, -0.5, 1.0, -1.0])
    rollout.returns = torch.arange(8.0).reshape(4, 2)
    rollout.timings["generate"] = 1.5
    index = torch.tensor([3, 0])
    part = rollout.select(index)
    assert part.completions == ["c3", "c0"] and part.prompts == ["p1", "p0"]
    torch.testing.assert_close(part.advantages, torch.tensor([-1.0, 0.5]))
    torch.testing.assert_close(part.returns, torch.tensor([[6.0, 7.0], [0.0, 1.0]]))
    assert part.values is None and part.group_size == 2 and part.timings == {"generate": 1.5}


def test_select_leaves_a_per_prompt_baseline_alone_even_when_its_size_is_n():
    # G = 1: the B greedy rewards have N rows too; guessing by the first dimension would slice them
    rollout = tiny_rollout([[1, 1], [1, 0], [1, 1]], group_size=1)
    rollout.greedy_rewards = torch.tensor([1.0, 2.0, 3.0])
    part = rollout.select(torch.tensor([2]))
    torch.testing.assert_close(part.greedy_rewards, torch.tensor([1.0, 2.0, 3.0]))
    assert part.num_samples == 1


def test_baseline_fields_are_rollout_level_and_results_are_per_sample():
    assert "greedy_rewards" not in Rollout.PER_SAMPLE and "greedy" not in Rollout.PER_SAMPLE
    assert {"prompt_ids", "completion_mask", "metadata", "advantages", "rewards", "anchor_values"} <= set(
        Rollout.PER_SAMPLE
    )


def test_to_samples_pads_to_a_width_and_concat_keeps_row_order():
    from reward_models import Samples

    a = tiny_rollout([[1, 1], [1, 0]], group_size=2, seed=1)  # width 2
    b = tiny_rollout([[1, 1, 1]], group_size=1, seed=2)  # width 3
    sa, sb = a.to_samples(width=3, pad_id=7), b.to_samples(width=3, pad_id=7)
    # a's completions gain one column of the pad id, masked out; its real tokens are untouched
    assert sa.completion_ids[:, 2].tolist() == [7, 7] and sa.completion_mask[:, 2].tolist() == [0, 0]
    assert torch.equal(sa.completion_ids[:, :2], a.completion_ids) and sa.completions == a.completions
    both = Samples.concat([sa, sb])
    assert both.completions == ["c0", "c1", "c0"] and both.group_index.tolist() == [0, 0, 0]
    assert torch.equal(both.completion_ids, torch.cat([sa.completion_ids, sb.completion_ids]))
    assert len(both) == 3 and both.metadata == [{}, {}, {}]
