import math

import pytest
from rm_helpers import assert_close, nan, samples

from reward_models import ExactMatch, MultipleChoice, NumericAnswer, RegexMatch, RewardError
from reward_models.verifiers import extract_choice, extract_number, last_boxed


@pytest.mark.parametrize(
    "text, mode, expected",
    [
        ("The answer is 42.", "last_number", 42.0),
        ("so 3/4 of them", "last_number", 0.75),  # fraction a/b = 0.75
        ("x = -1,234.5 done", "last_number", -1234.5),  # commas dropped, sign kept
        ("5-3=2", "last_number", 2.0),  # a minus glued to a digit is not a sign
        ("cost $1,000", "last_number", 1000.0),
        ("total 1,2,3", "last_number", 3.0),  # not a thousands group
        ("-.5", "last_number", -0.5),
        ("first 7, \\boxed{\\frac{3}{4}} then 9", "boxed", 0.75),
        ("\\boxed{-\\dfrac{1}{2}}", "boxed", -0.5),
        ("\\boxed{1{,}000}", "boxed", 1000.0),
        ("first 7 then 9", "boxed", None),  # no box in boxed mode
        ("\\boxed{x = 5} then 7", "auto", 5.0),  # auto prefers the box
        ("work... #### 72\nmore 3", "auto", 72.0),  # then the GSM8K marker
        ("first 7 then 9", "auto", 9.0),  # then the last number
        ("", "auto", None),
        ("no digits", "last_number", None),
        ("1/0", "last_number", None),  # zero denominator: no number
    ],
)
def test_extract_number(text, mode, expected):
    assert extract_number(text, mode) == expected


def test_last_boxed_nested_braces():
    assert last_boxed("\\boxed{1} and \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{unclosed") is None


def test_numeric_answer_scores():
    s = samples(
        ["so it is 4", "\\boxed{0.75}", "3/4", "five", "", "4.0000001", "1,000"],
        [{"answer": 4}, {"answer": "3/4"}, {"answer": "\\frac{3}{4}"}, {"answer": 5}, {"answer": 0},
         {"answer": "4"}, {"answer": "#### 1000"}],
    )
    out = NumericAnswer()(s)
    # |4.0000001 - 4| = 1e-7 <= 1e-6 -> 1; "five" and "" carry no number -> 0
    assert_close(out.rewards, [1, 1, 1, 0, 0, 1, 1])
    assert_close(out.metrics["extracted"], [1, 1, 1, 0, 0, 1, 1])


def test_numeric_tolerance_absolute_and_relative():
    s = samples(["100.5", "0.1"], [{"answer": 100}, {"answer": 0}])
    # absolute 0.1: |100.5-100| = 0.5 > 0.1 -> 0; |0.1-0| = 0.1 <= 0.1 -> 1
    assert_close(NumericAnswer(tolerance=0.1)(s).rewards, [0, 1])
    # relative 0.01: 0.5 <= 0.01*100 = 1 -> 1; 0.1 <= 0.01*0 = 0 is false -> 0
    assert_close(NumericAnswer(tolerance=0.01, relative=True)(s).rewards, [1, 0])


def test_numeric_boxed_mode_ignores_unboxed():
    s = samples(["4", "\\boxed{4}"], [{"answer": 4}] * 2)
    assert_close(NumericAnswer(extract="boxed")(s).rewards, [0, 1])


def test_numeric_missing_reference_raises_naming_key_and_row():
    s = samples(["4", "4"], [{"answer": 4}, {"solution": 4}])
    with pytest.raises(RewardError, match=r"NumericAnswer.*row 1.*'answer'"):
        NumericAnswer()(s)
    assert_close(NumericAnswer(missing="nan")(s).rewards, [1, nan])


def test_numeric_unparsable_reference_raises():
    with pytest.raises(RewardError, match="row 0 'answer'='n/a' holds no number"):
        NumericAnswer()(samples(["4"], [{"answer": "n/a"}]))


def test_numeric_rejects_bad_config():
    with pytest.raises(ValueError, match="extract"):
        NumericAnswer(extract="first")
    with pytest.raises(ValueError, match="tolerance"):
        NumericAnswer(tolerance=-1)


def test_exact_match():
    s = samples(["  Paris ", "paris", "The answer: <a>Rome</a>", "", "x"],
                [{"answer": "Paris"}, {"answer": "Paris"}, {"answer": "Rome"}, {"answer": ""}, {"answer": ["y", "x"]}])
    assert_close(ExactMatch()(s).rewards, [1, 0, 0, 1, 1])  # whitespace stripped, case kept, list = any
    assert_close(ExactMatch(ignore_case=True)(s).rewards, [1, 1, 0, 1, 1])
    # with a pattern only the tagged span counts; no match -> 0
    assert_close(ExactMatch(pattern=r"<a>(.*?)</a>")(s).rewards, [0, 0, 1, 0, 0])


def test_regex_match():
    s = samples(["abc123", "ABC", "", "zzz"], [{"pattern": r"\d+"}, {"pattern": "abc"}, {"pattern": ".*"}, {}])
    assert_close(RegexMatch(missing="nan")(s).rewards, [1, 0, 1, nan])
    assert_close(RegexMatch(ignore_case=True, missing="nan")(s).rewards, [1, 1, 1, nan])
    assert_close(RegexMatch(fullmatch=True, missing="nan")(s).rewards, [0, 0, 1, nan])
    with pytest.raises(RewardError, match=r"row 0 'pattern'='\(' is not a regex"):
        RegexMatch()(samples(["x"], [{"pattern": "("}]))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{C}", "C"),
        ("\\boxed{\\text{(B)}}", "B"),
        ("The answer is (D).", "D"),
        ("Answer: b", None),  # lower-case letters are not options
        ("Answer: B, since A is wrong", "B"),
        ("A", "A"),
        ("(c)", None),
        (" C. ", "C"),
        ("between (A) and (B) I pick (B)", "B"),
        ("A cat sat", None),  # the article is not an answer
        ("", None),
    ],
)
def test_extract_choice(text, expected):
    assert extract_choice(text) == expected


def test_multiple_choice():
    s = samples(["The answer is B", "Answer: C", "(A)", "", "D"],
                [{"answer": "B"}, {"answer": 1}, {"answer": "(a)"}, {"answer": "A"}, {"answer": "D. Paris"}])
    # index 1 -> "B" != "C"; "(a)" upper-cased -> A; empty -> 0
    assert_close(MultipleChoice()(s).rewards, [1, 0, 1, 0, 1])
    with pytest.raises(RewardError, match="row 0 'answer'='Z'"):
        MultipleChoice(letters="ABCD")(samples(["A"], [{"answer": "Z"}]))


def test_empty_batch():
    out = NumericAnswer()(samples([], []))
    assert out.rewards.shape == (0,) and not math.isnan(out.rewards.sum().item())
