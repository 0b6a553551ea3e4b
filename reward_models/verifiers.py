"""Verifiers: compare a completion with a reference in the sample's metadata. Scores are 1.0 / 0.0.

A missing reference (``metadata[key]`` absent or None) raises a ``KeyError`` naming the key and the
row (``missing="raise"``, the default) or scores NaN, "does not apply" (``missing="nan"``, for mixed
datasets). An empty completion scores 0.0.
"""
from __future__ import annotations

import math
import re
from typing import Any, Literal

import torch

from reward_models.answers import Answer, extract_answer, extract_number, last_boxed, last_number  # noqa: F401 (re-exported)
from reward_models.base import (
    MISSING,
    Missing,
    Reward,
    check_literal,
    check_missing,
    metadata_value,
    score_by_reference,
)
from reward_models.types import RewardOutput, Samples


def _reference_answer(value: Any, i: int, key: str) -> Answer:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "", (float(value),)
    answer = extract_answer(str(value), "auto")
    if answer is None:
        raise ValueError(f"NumericAnswer: metadata row {i} {key!r}={value!r} holds no number (nor a tuple of "
                         f"numbers); symbolic references need MathVerify")
    return answer


NumberExtract = Literal["auto", "last_number", "boxed"]


class NumericAnswer(Reward):
    """1.0 if the completion's final answer equals ``metadata[answer_key]``, else 0.0.

    The answer is found by :func:`~reward_models.answers.extract_answer`: a plain number or a
    bracketed tuple of numbers; a number that is part of an expression (``\\sqrt{2}``, ``2\\pi``,
    ``x^2``) is no answer, and a tuple matches only a tuple of the same brackets and length.
    Equal means ``|x − y| ≤ tolerance`` (absolute) or ``|x − y| ≤ tolerance · |y|`` (``relative``),
    element by element. The reference may be a number or a string parsed like a completion
    (``"3/4"``, ``"#### 1,234"``, ``"(1, 2)"``). Metric ``extracted``: 1 if an answer was found.
    """

    def __init__(
        self,
        answer_key: str = "answer",
        extract: NumberExtract = "auto",
        tolerance: float = 1e-6,
        relative: bool = False,
        missing: Missing = "raise",
        text_key: str | None = None,
    ) -> None:
        """
        Args:
            answer_key: metadata field holding the reference answer.
            extract: how to find the completion's answer (see :func:`~reward_models.answers.extract_answer`).
            tolerance: absolute (or relative) tolerance of the comparison.
            relative: compare with ``tolerance · |reference|``.
            missing: ``"raise"`` or ``"nan"`` when a row has no reference.
            text_key: read the answer from ``metadata[text_key]`` instead of the completion, e.g. ``final_turn``
                (a multi-turn episode's last model turn: the episode's text also holds the tools' answers, whose
                numbers must not count as the model's); a row without it raises, naming the row.
        """
        check_literal("NumericAnswer", "extract", extract, NumberExtract)
        if tolerance < 0:
            raise ValueError(f"NumericAnswer: tolerance must be >= 0, got {tolerance}")
        self.answer_key, self.extract, self.tolerance, self.relative = answer_key, extract, float(tolerance), relative
        self.missing = check_missing("NumericAnswer", missing)
        self.text_key = text_key

    def forward(self, samples: Samples) -> RewardOutput:
        rewards, extracted = [], []
        for i, completion in enumerate(samples.completions):
            ref = metadata_value(samples, i, self.answer_key, "NumericAnswer", self.missing)
            if self.text_key is not None:
                completion = metadata_value(samples, i, self.text_key, "NumericAnswer")
                if not isinstance(completion, str):
                    raise TypeError(f"NumericAnswer: metadata row {i} {self.text_key!r} is "
                                    f"{type(completion).__name__}, expected text")
            x = extract_answer(completion, self.extract)
            extracted.append(float(x is not None))
            if ref is MISSING:
                rewards.append(math.nan)
                continue
            y = _reference_answer(ref, i, self.answer_key)
            rewards.append(float(x is not None and self.equal(x, y)))
        return RewardOutput(torch.tensor(rewards), {"extracted": torch.tensor(extracted)})

    def equal(self, x: Answer, y: Answer) -> bool:
        """Same brackets, same length, every value within the tolerance of the reference's."""
        if x[0] != y[0] or len(x[1]) != len(y[1]):
            return False
        return all(
            abs(a - b) <= (self.tolerance * abs(b) if self.relative else self.tolerance)
            for a, b in zip(x[1], y[1], strict=True)
        )


def _normalize_text(text: str, ignore_case: bool, whitespace: bool) -> str:
    text = " ".join(text.split()) if whitespace else text.strip()
    return text.casefold() if ignore_case else text


class ExactMatch(Reward):
    """1.0 if the (extracted) completion equals ``str(metadata[answer_key])`` after normalisation.

    With ``pattern``, the candidate is the last match of that regex in the completion (its group 1
    if it has a group); no match scores 0. A list reference accepts any of its items.
    """

    def __init__(
        self,
        answer_key: str = "answer",
        pattern: str | None = None,
        ignore_case: bool = False,
        normalize_whitespace: bool = True,
        missing: Missing = "raise",
    ) -> None:
        self.answer_key, self.ignore_case, self.normalize_whitespace = answer_key, ignore_case, normalize_whitespace
        self.pattern = None if pattern is None else re.compile(pattern, re.DOTALL)
        self.missing = check_missing("ExactMatch", missing)

    def _candidate(self, completion: str) -> str | None:
        if self.pattern is None:
            return completion
        matches = list(self.pattern.finditer(completion))
        if not matches:
            return None
        return matches[-1].group(1 if self.pattern.groups else 0)

    def score(self, samples: Samples) -> list[float | None]:
        return score_by_reference(samples, self.answer_key, "ExactMatch", self.missing, self._judge)

    def _judge(self, i: int, completion: str, ref: Any) -> float:
        refs = ref if isinstance(ref, (list, tuple)) else [ref]
        norm = lambda t: _normalize_text(str(t), self.ignore_case, self.normalize_whitespace)  # noqa: E731
        cand = self._candidate(completion)
        return float(cand is not None and norm(cand) in {norm(r) for r in refs})


class RegexMatch(Reward):
    """1.0 if the regex in ``metadata[pattern_key]`` matches the completion (search, or fullmatch)."""

    def __init__(
        self,
        pattern_key: str = "pattern",
        fullmatch: bool = False,
        ignore_case: bool = False,
        missing: Missing = "raise",
    ) -> None:
        self.pattern_key, self.fullmatch = pattern_key, fullmatch
        self.flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
        self.missing = check_missing("RegexMatch", missing)

    def score(self, samples: Samples) -> list[float | None]:
        return score_by_reference(samples, self.pattern_key, "RegexMatch", self.missing, self._judge)

    def _judge(self, i: int, completion: str, pattern: Any) -> float:
        try:
            regex = re.compile(str(pattern), self.flags)
        except re.error as err:
            raise ValueError(f"RegexMatch: metadata row {i} {self.pattern_key!r}={pattern!r} is not a regex: {err}"
                             ) from err
        match = regex.fullmatch(completion.strip()) if self.fullmatch else regex.search(completion)
        return float(match is not None)


def extract_choice(text: str, letters: str = "ABCDEFGHIJ") -> str | None:
    """The chosen option letter, tried in order: ``\\boxed{C}``; the last "answer is (C)" /
    "Answer: C"; a completion that is only the letter ("C", "(C)", "C."); the last "(C)"."""
    cls = f"[{re.escape(letters)}]"
    boxed = last_boxed(text)
    if boxed is not None:
        m = re.fullmatch(rf"\s*(?:\\text\{{)?\(?({cls})\)?\}}?\s*", boxed)
        if m:
            return m.group(1)
    said = re.findall(rf"(?i:answer)\s*(?:(?i:is)|:)?\s*(?:(?i:option)\s*)?[:\-]?\s*\**\(?({cls})\)?(?![A-Za-z])", text)
    if said:
        return said[-1]
    alone = re.fullmatch(rf"\s*\**\(?({cls})[).:]?\**\s*", text)
    if alone:
        return alone.group(1)
    parens = re.findall(rf"\(({cls})\)", text)
    return parens[-1] if parens else None


class MultipleChoice(Reward):
    """1.0 if the chosen letter (see :func:`extract_choice`) is ``metadata[answer_key]``.

    The reference is a letter (``"B"``, ``"(B)"``, ``"b"``) or a 0-based option index (1 → ``"B"``).
    """

    def __init__(
        self,
        answer_key: str = "answer",
        letters: str = "ABCDEFGHIJ",
        missing: Missing = "raise",
    ) -> None:
        self.answer_key, self.letters = answer_key, letters
        self.missing = check_missing("MultipleChoice", missing)

    def _reference(self, ref: Any, i: int) -> str:
        if isinstance(ref, int) and not isinstance(ref, bool) and 0 <= ref < len(self.letters):
            return self.letters[ref]
        m = re.match(rf"\s*\(?([{re.escape(self.letters)}])(?![A-Za-z])", str(ref).upper())
        letter = m.group(1) if m else None
        if letter is None:
            raise ValueError(
                f"MultipleChoice: metadata row {i} {self.answer_key!r}={ref!r} is not one of {self.letters!r}"
            )
        return letter

    def score(self, samples: Samples) -> list[float | None]:
        return score_by_reference(samples, self.answer_key, "MultipleChoice", self.missing,
                                  lambda i, completion, ref: extract_choice(completion, self.letters)
                                  == self._reference(ref, i))
