import math

import pytest
import torch
from rm_helpers import Const, assert_close, indexed, nan

from reward_models import Affine, Clip, Gate, Max, Min, Normalize, Product, Reward, RewardError, WeightedSum

EPS = 1e-6


def test_weighted_sum_nan_policy_and_default_weight():
    a, b = Const([1, nan, 2, nan]), Const([3, 4, nan, nan])
    out = WeightedSum({"a": a, "b": b}, weights={"a": 2.0})(indexed(4))
    # b's weight defaults to 1: [2*1+3, 4 (a NaN skipped), 2*2 (b skipped), all NaN -> NaN]
    assert_close(out.rewards, [5, 4, 4, nan])
    assert_close(out.metrics["a"], [1, nan, 2, nan])
    assert_close(out.metrics["b"], [3, 4, nan, nan])


def test_weighted_sum_rejects_unknown_weights_and_empty():
    with pytest.raises(ValueError, match=r"unknown components \['c'\]"):
        WeightedSum({"a": Const([1])}, weights={"c": 1.0})
    with pytest.raises(ValueError, match="at least one"):
        WeightedSum({})
    with pytest.raises(TypeError, match="component 'a' is a int"):
        WeightedSum({"a": 3})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    "cls, expected",
    [
        (Product, [3, 4, 2, nan]),  # 1*3; NaN skipped (identity 1); all NaN -> NaN
        (Min, [1, 4, 2, nan]),
        (Max, [3, 4, 2, nan]),
    ],
)
def test_elementwise_combinators(cls, expected):
    out = cls({"a": Const([1, nan, 2, nan]), "b": Const([3, 4, nan, nan])})(indexed(4))
    assert_close(out.rewards, expected)


def test_gate():
    gate, inner = Const([1, 0.4, nan, 0.5, 0]), Const([7, 8, 9, nan, nan])
    out = Gate(gate, inner, threshold=0.5, otherwise=-1)(indexed(5))
    # open: 1>=.5, NaN gate (does not apply), 0.5>=.5; closed: 0.4, 0 -> -1; open NaN inner stays NaN
    assert_close(out.rewards, [7, -1, 9, nan, -1])
    assert_close(out.metrics["gate"], [1, 0.4, nan, 0.5, 0])
    assert_close(out.metrics["inner"], [7, 8, 9, nan, nan])
    assert inner.scored == 5


def test_gate_skip_closed_scores_only_open_samples():
    inner = Const([7, 8, 9], metric="m")
    out = Gate(Const([1, 0, 1]), inner, skip_closed=True)(indexed(3))
    assert inner.scored == 2
    assert_close(out.rewards, [7, 0, 9])
    assert_close(out.metrics["inner"], [7, nan, 9])
    assert_close(out.metrics["inner/m"], [70, nan, 90])


def test_hierarchical_metric_keys():
    tree = WeightedSum(
        {"gated": Gate(Const([1, 0], metric="m"), Const([2, 3])), "length": Const([-1, -2])},
        weights={"length": 0.5},
    )
    out = tree(indexed(2))
    assert set(out.metrics) == {"gated", "gated/gate", "gated/gate/m", "gated/inner", "length"}
    # gated = [2 (open), 0 (closed)]; total = gated + 0.5*length = [2-0.5, 0-1]
    assert_close(out.metrics["gated"], [2, 0])
    assert_close(out.rewards, [1.5, -1])


def test_clip_and_affine():
    vals = [-1, 0.5, 2, nan]
    assert_close(Clip(Const(vals), low=0, high=1)(indexed(4)).rewards, [0, 0.5, 1, nan])
    assert_close(Clip(Const(vals), high=1)(indexed(4)).rewards, [-1, 0.5, 1, nan])
    # 2*r + 1
    out = Affine(Const(vals), scale=2, shift=1)(indexed(4))
    assert_close(out.rewards, [-1, 2, 5, nan])
    assert_close(out.metrics["inner"], vals)
    with pytest.raises(ValueError, match="low=1 > high=0"):
        Clip(Const(vals), low=1, high=0)


def test_normalize_batch():
    out = Normalize(Const([1, 2, 3, nan]))(indexed(4))
    # mean 2, population std sqrt(((1-2)^2 + 0 + (3-2)^2)/3) = sqrt(2/3); NaN left out and kept
    s = math.sqrt(2 / 3) + EPS
    assert_close(out.rewards, [-1 / s, 0, 1 / s, nan])
    out = Normalize(Const([1, 2, 3, nan]), center=False)(indexed(4))
    assert_close(out.rewards, [1 / s, 2 / s, 3 / s, nan])


def test_normalize_group():
    s = indexed(6)
    s.group_index = torch.tensor([0, 0, 1, 1, 1, 2])
    out = Normalize(Const([1, 3, 5, 5, nan, 4]), mode="group")(s)
    # group 0: mean 2, std 1; group 1: {5, 5} std 0 -> 0/eps = 0, NaN kept; group 2 alone -> 0
    assert_close(out.rewards, [-1 / (1 + EPS), 1 / (1 + EPS), 0, 0, nan, 0])


def test_normalize_running_state_roundtrip():
    node = Normalize(Const([1, 3, 5, nan]), mode="running")
    s = indexed(4)
    first = node(s.select([0, 1]))
    # after [1, 3]: n=2, mean 2, M2 = 1+1 = 2, std = sqrt(2/2) = 1
    assert_close(first.rewards, [-1 / (1 + EPS), 1 / (1 + EPS)])
    second = node(s.select([2, 3]))
    # after [1, 3, 5]: mean 3, M2 = 4+0+4 = 8, std = sqrt(8/3); NaN not counted
    assert_close(second.rewards, [2 / (math.sqrt(8 / 3) + EPS), nan])
    state = WeightedSum({"n": node}).state_dict()
    assert state == {"n": {"count": 3, "mean": pytest.approx(3.0), "m2": pytest.approx(8.0)}}
    fresh = WeightedSum({"n": Normalize(Const([1, 3, 5, 7]), mode="running")})
    fresh.load_state_dict(state)
    fresh_out = fresh(indexed(4).select([3]))
    # continue with 7: mean (1+3+5+7)/4 = 4, M2 = 9+1+1+9 = 20, std = sqrt(5)
    assert_close(fresh_out.rewards, [3 / (math.sqrt(5) + EPS)])


def test_normalize_stateless_modes_have_no_state():
    assert Normalize(Const([1]), mode="batch").state_dict() == {}
    with pytest.raises(ValueError, match="mode"):
        Normalize(Const([1]), mode="ema")  # type: ignore[arg-type]


def test_empty_batch_through_combinators():
    tree = WeightedSum({"a": Normalize(Clip(Const([]), low=0)), "b": Gate(Const([]), Const([]))})
    out = tree(indexed(0))
    assert out.rewards.shape == (0,) and all(v.shape == (0,) for v in out.metrics.values())


def test_to_reaches_every_node():
    seen = []

    class Dev(Reward):
        def score(self, s):
            return [0.0] * len(s)

        def to(self, device):
            seen.append(str(device))
            return self

    WeightedSum({"a": Gate(Dev(), Clip(Dev())), "b": Dev()}).to("cpu")
    assert seen == ["cpu", "cpu", "cpu"]


def test_child_error_names_path():
    class Boom(Reward):
        def score(self, s):
            raise ValueError("bad input")

    tree = WeightedSum({"a": Gate(Const([1]), Boom())})
    with pytest.raises(RewardError, match=r"reward component 'a/inner' \(Boom\) failed: ValueError: bad input") as info:
        tree(indexed(1))
    assert info.value.path == ("a", "inner")
    assert isinstance(info.value.__cause__, ValueError)


def test_fill_nan():
    from reward_models import FillNaN

    out = FillNaN(Const([1, nan, -2]), value=-1)(indexed(3))
    assert_close(out.rewards, [1, -1, -2])
    assert_close(out.metrics["inner"], [1, nan, -2])  # the NaN stays visible one level down
