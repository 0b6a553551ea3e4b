import pytest
import torch
from rm_helpers import assert_close, samples

from reward_models.format import JsonFormat, RegexFormat, TagFormat, parse_json
from reward_models.length import LengthPenalty, OverlongPenalty, RepetitionPenalty

GOOD = "<think>\nsteps\n</think>\n<answer>42</answer>"


def test_regex_format():
    s = samples(["Answer: 4", "answer: 4", "x Answer: 4", ""])
    assert_close(RegexFormat(r"Answer: \d")(s).rewards, [1, 0, 1, 0])
    assert_close(RegexFormat(r"answer: \d", fullmatch=True, ignore_case=True)(s).rewards, [1, 1, 0, 0])
    with pytest.raises(ValueError, match="not a regex"):
        RegexFormat("(")


def test_tag_format_strict_and_loose():
    s = samples([
        GOOD,
        "  " + GOOD + "\n",  # surrounding whitespace is fine
        "intro " + GOOD,  # text outside the tags
        "<answer>42</answer><think>x</think>",  # wrong order
        "<think>a</think><think>b</think><answer>1</answer>",  # think twice
        "<think>a</think>",  # answer missing
        "",
    ])
    assert_close(TagFormat()(s).rewards, [1, 1, 0, 0, 0, 0, 0])
    assert_close(TagFormat(strict=False)(s).rewards, [1, 1, 1, 0, 0, 0, 0])
    # partial = well-formed tags / 2: wrong order still has both; doubled think has only answer
    assert_close(TagFormat(partial=True)(s).rewards, [1, 1, 1, 1, 0.5, 0.5, 0])


def test_tag_format_prefix():
    # the prompt already opened <think>; the completion continues inside it
    s = samples(["steps</think><answer>1</answer>"])
    assert_close(TagFormat(prefix="<think>")(s).rewards, [1])
    assert_close(TagFormat()(s).rewards, [0])


@pytest.mark.parametrize(
    "text, extract, expected",
    [
        ('{"a": 1}', "auto", (True, {"a": 1})),
        ('Here:\n```json\n{"a": 2}\n```\n', "auto", (True, {"a": 2})),
        ('Result {"a": 3} done', "auto", (True, {"a": 3})),
        ('Result {"a": 3} done', "full", (False, None)),
        ('{"a": 1}', "fenced", (False, None)),
        ("[1, 2]", "auto", (True, [1, 2])),
        ("{bad}", "auto", (False, None)),
        ("", "auto", (False, None)),
    ],
)
def test_parse_json(text, extract, expected):
    assert parse_json(text, extract) == expected


def test_json_format_required_keys():
    s = samples(['{"name": "x", "age": 3}', '{"name": "x"}', "[1]", "nope", ""])
    out = JsonFormat(required_keys=["name", "age"])(s)
    assert_close(out.rewards, [1, 0, 0, 0, 0])
    assert_close(out.metrics["valid"], [1, 1, 1, 0, 0])
    assert_close(JsonFormat()(s).rewards, [1, 1, 1, 0, 0])


def test_length_penalty_chars_and_tokens():
    s = samples(["a" * 10, "a" * 3, ""])
    # chars: -0.1 * max(0, L - 4) = [-0.6, 0, 0]
    assert_close(LengthPenalty(scale=0.1, free_length=4)(s).rewards, [-0.6, 0, 0])
    assert_close(LengthPenalty(scale=0.1, max_penalty=0.5)(s).rewards, [-0.5, -0.3, 0])
    s.completion_mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    # tokens: L = [2, 3, 0] -> -0.1 * L
    assert_close(LengthPenalty(scale=0.1)(s).rewards, [-0.2, -0.3, 0])


def test_overlong_penalty_dapo():
    # L_max = 10, L_cache = 4: free up to 6, ramp (6 - L)/4 on (6, 10], -1 beyond
    lengths = [0, 6, 7, 8, 10, 11]
    s = samples(["x" * n for n in lengths])
    assert_close(OverlongPenalty(max_length=10, buffer_length=4)(s).rewards, [0, 0, -0.25, -0.5, -1, -1])
    assert_close(OverlongPenalty(10, 4, penalty_factor=2)(s).rewards, [0, 0, -0.5, -1, -2, -2])
    # token lengths from the mask win over characters: 7 tokens -> -0.25
    s = samples(["short"])
    s.completion_mask = torch.ones(1, 7)
    assert_close(OverlongPenalty(10, 4)(s).rewards, [-0.25])
    with pytest.raises(ValueError, match="buffer_length"):
        OverlongPenalty(max_length=4, buffer_length=5)


def test_repetition_penalty():
    s = samples(["a b a b a b", "a b c d", "a", ""])
    # bigrams of "a b a b a b": ab ba ab ba ab -> 5 total, 2 distinct -> -(1 - 2/5) = -0.6
    assert_close(RepetitionPenalty(n=2)(s).rewards, [-0.6, 0, 0, 0])
    # chars "aaaa", n=2: aa x3, 1 distinct -> -(1 - 1/3)
    assert_close(RepetitionPenalty(n=2, unit="char", scale=3)(samples(["aaaa"])).rewards, [-2.0])
    s = samples(["text ignored", "x"])
    s.completion_ids = torch.tensor([[5, 5, 5, 9], [1, 2, 1, 2]])
    s.completion_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    # tokens [5,5,5]: bigrams 55 55 -> -(1 - 1/2); [1,2,1,2]: 12 21 12 -> -(1 - 2/3)
    assert_close(RepetitionPenalty(n=2)(s).rewards, [-0.5, -1 / 3])
    with pytest.raises(Exception, match="needs Samples.completion_ids"):
        RepetitionPenalty(unit="token")(samples(["a"]))
