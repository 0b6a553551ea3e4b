"""MathVerify: symbolic answer checking with math-verify, under the leaves' NaN and error policies."""
from __future__ import annotations

import pytest
import yaml
from rm_helpers import assert_close, nan, samples

import reward_models
from reward_models import RewardError
from reward_models.config import build_reward

pytest.importorskip("math_verify", reason="needs the math extra: pip install 'lightning-trepo[math]'")
from reward_models.mathverify import MathVerify  # noqa: E402


def test_symbolic_equivalence_and_the_numeric_false_positives():
    cases = [
        ("\\boxed{\\frac{1}{2}}", "0.5", 1),  # 1/2 = 0.5
        ("so \\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1),  # sqrt(8) = 2 sqrt(2)
        ("$\\frac{6}{4}$", "3/2", 1),  # LaTeX in $...$, reference as a plain fraction
        ("\\boxed{85}", 85, 1),  # an int reference
        ("The answer is 85", "85", 1),
        ("\\boxed{\\sqrt{2}}", "2", 0),  # the four NumericAnswer used to accept
        ("$2\\pi$", "2", 0),
        ("$x^2$", "2", 0),
        ("$(3, 2)$", "(1,2)", 0),
        ("$(1, 2)$", "(1,2)", 1),  # a bare "(1,2)" reference is read as LaTeX (math-verify alone reads nothing)
        ("\\boxed{7} but first \\boxed{85}", "85", 1),  # the last box is the answer
    ]
    out = MathVerify()(samples([c for c, _, _ in cases], [{"answer": g} for _, g, _ in cases]))
    assert_close(out.rewards, [e for _, _, e in cases])


def test_latex_extraction_ignores_unformatted_numbers():
    s = samples(["85", "\\boxed{85}", "no answer"], [{"answer": "85"}] * 3)
    any_ = MathVerify()(s)
    assert_close(any_.rewards, [1, 1, 0])
    assert_close(any_.metrics["extracted"], [1, 1, 0])
    latex = MathVerify(extraction="latex")(s)  # as TRL's accuracy_reward: a bare 85 is not read
    assert_close(latex.rewards, [0, 1, 0])
    assert_close(latex.metrics["extracted"], [0, 1, 0])


def test_missing_and_unparsable_references():
    s = samples(["\\boxed{1}", "\\boxed{1}"], [{"answer": "1"}, {"other": "1"}])
    with pytest.raises(RewardError, match=r"MathVerify.*row 1.*'answer'"):
        MathVerify()(s)
    assert_close(MathVerify(missing="nan")(s).rewards, [1, nan])
    with pytest.raises(RewardError, match=r"row 0 'answer'='' is not an answer math-verify can parse"):
        MathVerify()(samples(["\\boxed{1}"], [{"answer": ""}]))


def test_bare_references_are_read_as_one_expression():
    # math-verify's own parse of undelimited "x^2 + 1" keeps only the 1 (so "\boxed{1}" would pass);
    # MathVerify reads a bare reference as LaTeX, and a delimited one (a worked solution) as it is
    s = samples(["\\boxed{x^2 + 1}", "\\boxed{1}", "\\boxed{18}"],
                [{"answer": "x^2 + 1"}, {"answer": "x^2 + 1"}, {"answer": "so $9 \\cdot 2 = 18$, \\boxed{18}"}])
    assert_close(MathVerify()(s).rewards, [1, 0, 1])


def test_a_failing_checker_follows_on_error():
    leaf = MathVerify(on_error="nan")

    class Broken:  # math-verify raising inside verify
        def __getattr__(self, name):
            return getattr(leaf_mv, name)

        @staticmethod
        def verify(*args, **kwargs):
            raise RuntimeError("sympy blew up")

    leaf_mv, leaf._mv = leaf._mv, Broken()
    out = leaf(samples(["\\boxed{1}", "\\boxed{2}"], [{"answer": "1"}, {"answer": "2"}]))
    assert_close(out.rewards, [nan, nan])
    assert_close(out.metrics["failed"], [1, 1])
    leaf.set_policy("raise")
    with pytest.raises(RewardError, match="MathVerify.*RuntimeError: sympy blew up"):
        leaf(samples(["\\boxed{1}"], [{"answer": "1"}]))


def test_bad_config_and_yaml():
    with pytest.raises(ValueError, match="extraction must be 'any' or 'latex'"):
        MathVerify(extraction="boxed")
    leaf = build_reward(yaml.safe_load("{class_path: reward_models.MathVerify, init_args: {answer_key: solution}}"))
    assert isinstance(leaf, reward_models.MathVerify)
    assert_close(leaf(samples(["\\boxed{3}"], [{"solution": "3"}])).rewards, [1])
