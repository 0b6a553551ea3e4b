import time

import pytest
import torch
from rm_helpers import Const, assert_close, indexed, nan, samples

from reward_models import FunctionReward, Guard, Reward, RewardError, RewardOutput, Samples, WeightedSum


class CountLen(Reward):
    """Scores len(completion); counts how many rows it actually scored."""

    def __init__(self):
        self.scored = 0

    def score(self, s):
        self.scored += len(s)
        return [float(len(c)) for c in s.completions]


def test_identical_pairs_scored_once():
    leaf = CountLen()
    s = samples(["aa", "aa", "b", "aa", "b", "aa"], prompts=["p", "p", "p", "p", "p", "q"])
    out = WeightedSum({"x": leaf})(s)
    # distinct (prompt, completion): (p,aa), (p,b), (q,aa) -> 3 scored; results expanded in order
    assert leaf.scored == 3
    assert_close(out.rewards, [2, 2, 1, 2, 1, 2])
    assert_close(out.metrics["x"], [2, 2, 1, 2, 1, 2])


def test_dedup_respects_metadata_and_token_length():
    leaf = CountLen()
    s = samples(["a", "a", "a"], [{"answer": 1}, {"answer": 2}, {"answer": 1}])
    leaf(s)
    assert leaf.scored == 2  # rows 0 and 2 share metadata
    leaf = CountLen()
    s.completion_mask = torch.tensor([[1, 0], [1, 1], [1, 1]])
    leaf(s)
    assert leaf.scored == 3  # row 0 has 1 token, row 2 has 2 tokens


def test_dedup_can_be_turned_off():
    leaf = CountLen()
    leaf.deduplicate = False
    leaf(samples(["a", "a"]))
    assert leaf.scored == 2


class Boom(Reward):
    def score(self, s):
        raise ValueError("bad input")


def test_guard_nan_policy_marks_failed():
    tree = WeightedSum({"x": Guard(Boom()), "y": Const([1, 2]), "z": Guard(Const([3, 4]))})
    out = tree(indexed(2))
    # x failed -> NaN (skipped by the sum); total = y + z
    assert_close(out.rewards, [4, 6])
    assert_close(out.metrics["x"], [nan, nan])
    assert_close(out.metrics["x/failed"], [1, 1])
    assert_close(out.metrics["z/failed"], [0, 0])  # present on success: a failure rate to log
    assert "y/failed" not in out.metrics


def test_guard_raise_policy_and_nested_paths():
    tree = WeightedSum({"outer": WeightedSum({"inner": Boom()})})
    with pytest.raises(RewardError, match=r"'outer/inner' \(Boom\) failed: ValueError: bad input"):
        tree(indexed(1))
    with pytest.raises(RewardError, match=r"'g/inner'"):
        WeightedSum({"g": Guard(WeightedSum({"inner": Boom()}), on_error="raise")})(indexed(1))


class Sleepy(Reward):
    def score(self, s):
        time.sleep(1.0)
        return [1.0] * len(s)


def test_timeout_nan_and_raise():
    start = time.perf_counter()
    out = WeightedSum({"slow": Guard(Sleepy(), timeout=0.1), "y": Const([5])})(indexed(1))
    assert time.perf_counter() - start < 0.8
    assert_close(out.rewards, [5])
    assert_close(out.metrics["slow/failed"], [1])
    with pytest.raises(RewardError, match=r"'slow' \(Guard\) failed: TimeoutError: timed out after 0.1 s"):
        WeightedSum({"slow": Guard(Sleepy(), on_error="raise", timeout=0.1)})(indexed(1))


def test_policy_validation():
    with pytest.raises(ValueError, match="on_error"):
        Guard(Const([1]), on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        Guard(Const([1]), timeout=0)


def test_wrong_shape_is_named():
    class Bad(Reward):
        def forward(self, s):
            return RewardOutput(torch.zeros(len(s) + 1))

    with pytest.raises(
        RewardError, match=r"'b' \(Bad\) failed: ValueError: reward component Bad returned shape \(3,\)"
    ):
        WeightedSum({"b": Bad()})(indexed(2))


def test_function_reward_by_import_path():
    fr = FunctionReward("rm_helpers.brevity")
    s = samples(["abc", "", "de"], [{"target": 1}, {"target": 1}, {"target": None}])
    # -len: [-3, -0 (empty), NaN (None = does not apply)]
    assert_close(fr(s).rewards, [-3, 0, nan])
    with pytest.raises(ImportError, match="has no attribute 'nope'"):
        FunctionReward("rm_helpers.nope")
    failing = FunctionReward("rm_helpers.brevity", kwargs={"target": 5}, on_error="nan")
    assert_close(failing(samples(["a"])).metrics["failed"], [1])


def test_latency_recorded():
    leaf = Const([1.0])
    tree = WeightedSum({"a": leaf})
    tree(indexed(1))
    assert tree.last_latency_s >= leaf.last_latency_s >= 0


def test_samples_contract():
    s = Samples(prompts=["a"], completions=["b"])
    assert s.metadata == [{}] and s.group_index.tolist() == [0]


def test_samples_concat_refuses_mixed_token_fields():
    with_ids = Samples(prompts=["p"], completions=["c"], completion_ids=torch.ones(1, 2, dtype=torch.long),
                       completion_mask=torch.ones(1, 2, dtype=torch.long))
    text_only = Samples(prompts=["q"], completions=["d"])
    with pytest.raises(ValueError, match="some parts carry completion_ids"):
        Samples.concat([with_ids, text_only])
    assert Samples.concat([text_only, text_only]).completion_ids is None


def test_reward_output_scatter_fills_rows_and_leaves_the_rest_nan():
    # rows 0 and 3 from the first part, row 1 from the second; row 2 is covered by none -> NaN everywhere
    first = RewardOutput(torch.tensor([1.0, 4.0]), {"m": torch.tensor([10.0, 40.0])})
    second = RewardOutput(torch.tensor([2.0]), {"m": torch.tensor([20.0]), "only_second": torch.tensor([5.0])})
    out = RewardOutput.scatter(4, [(torch.tensor([0, 3]), first), (torch.tensor([1]), second)])
    assert_close(out.rewards, [1.0, 2.0, nan, 4.0])
    assert_close(out.metrics["m"], [10.0, 20.0, nan, 40.0])
    assert_close(out.metrics["only_second"], [nan, 5.0, nan, nan])
