"""NumericAnswer does not accept an answer in which a number merely appears (reward hacking in math RL)."""
from __future__ import annotations

import pytest
from rm_helpers import assert_close, samples

from reward_models import NumericAnswer, RewardError
from reward_models.verifiers import extract_number


@pytest.mark.parametrize(
    "completion, gold",
    [
        ("\\boxed{\\sqrt{2}}", "2"),  # sqrt(2) != 2: the 2 is the radicand
        ("2\\pi", "2"),  # 2*pi != 2
        ("(3, 2)", "(1,2)"),  # a different pair that ends in the same number
        ("x^2", "2"),  # the 2 is an exponent
        ("\\boxed{2\\pi}", "2"),
        ("$x^2$", 2),
        ("so it is 2x", 2),
        ("\\frac{\\sqrt{2}}{2}", "2"),  # nested braces survive as LaTeX: the 2 is a denominator
        ("5 - 3", "3"),  # an expression, not the number 3
        ("f(2)", "2"),
        ("2 \\cdot 3", "3"),
        ("2^{10}", "10"),
        ("(1, 2)", "2"),  # a tuple never equals a number ...
        ("2", "(1, 2)"),  # ... nor a number a tuple
        ("[1, 2]", "(1, 2)"),  # brackets differ
        ("\\boxed{1, 2}", "2"),  # a box must hold one answer
    ],
)
def test_a_number_inside_an_expression_is_no_answer(completion, gold):
    assert_close(NumericAnswer()(samples([completion], [{"answer": gold}])).rewards, [0])


@pytest.mark.parametrize(
    "completion, gold",
    [
        ("85", "85"),  # the built-in arithmetic task's completions
        ("The answer is 85", "85"),
        ("\\boxed{85}", "85"),
        ("85.0", "85"),
        ("<answer>85</answer>", "85"),  # the built-in format task
        ("Tom now has 14", 14),  # the built-in two-step task
        ("The answer is 85.", 85),
        ("\\boxed{x = 5}", 5),
        ("\\boxed{5\\text{ cm}}", 5),  # units are not part of the number
        ("\\boxed{90^\\circ}", 90),
        ("\\boxed{\\$18}", "#### 18"),
        ("she has -3 left", -3),  # a sign after a word is a sign
        ("x = -1,234.5", -1234.5),
        ("\\(\\frac{1}{2}\\)", 0.5),
        ("(1, 2)", "(1,2)"),  # tuples compare element by element
        ("\\left( 1,2 \\right)", "(1, 2)"),
        ("The answer is 85 - done", 85),  # a dash before a word is prose
    ],
)
def test_plain_answers_still_score(completion, gold):
    assert_close(NumericAnswer()(samples([completion], [{"answer": gold}])).rewards, [1])


def test_tuple_tolerance_is_per_element():
    s = samples(["(1.05, 2)", "(1.2, 2)"], [{"answer": "(1, 2)"}] * 2)
    # |1.05 - 1| = 0.05 <= 0.1 and |2 - 2| = 0 -> 1; |1.2 - 1| = 0.2 > 0.1 -> 0
    assert_close(NumericAnswer(tolerance=0.1)(s).rewards, [1, 0])


def test_extracted_metric_marks_expressions_as_not_extracted():
    out = NumericAnswer()(samples(["\\boxed{\\sqrt{2}}", "\\boxed{2}"], [{"answer": 2}] * 2))
    assert_close(out.metrics["extracted"], [0, 1])
    assert extract_number("x^2", "last_number") is None and extract_number("(1, 2)") is None


def test_a_symbolic_reference_is_an_error_even_when_the_completion_has_no_answer():
    with pytest.raises(RewardError, match=r"row 0 'answer'='\\\\sqrt\{8\}' holds no number.*MathVerify"):
        NumericAnswer()(samples(["no idea"], [{"answer": "\\sqrt{8}"}]))


def test_text_key_reads_the_final_turn_not_the_tools_answer():
    # a tool-use episode: the calculator's answer 2940 is in the episode text, the model's final turn is not a number
    episode = "<calc>140*21</calc>\nuser\n<result>2940</result>\nassistant\nDone."
    rows = [{"answer": "2940", "final_turn": "Done."}, {"answer": "2940", "final_turn": "It is 2940."}]
    s = samples([episode, episode], rows)
    assert_close(NumericAnswer()(s).rewards, [1, 1])  # the whole text: the tool's number counts as the answer
    out = NumericAnswer(text_key="final_turn")(s)
    assert_close(out.rewards, [0, 1])  # the model's own last turn: only the second answered
    assert_close(out.metrics["extracted"], [0, 1])


def test_text_key_missing_or_not_text_is_an_error_naming_the_row():
    with pytest.raises(RewardError, match=r"row 1 has no 'final_turn'"):
        NumericAnswer(text_key="final_turn")(samples(["1", "1"], [{"answer": 1, "final_turn": "1"}, {"answer": 1}]))
    with pytest.raises(RewardError, match=r"row 0 'final_turn' is int, expected text"):
        NumericAnswer(text_key="final_turn")(samples(["1"], [{"answer": 1, "final_turn": 1}]))
