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

from reward_models.base import MISSING, Reward, check_missing, metadata_value
from reward_models.types import RewardOutput, Samples

_UNSIGNED = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+"
# A sign counts only when not glued to a word or closing bracket ("5-3" is 5 and 3, "x=-3" is -3).
NUMBER_RE = re.compile(rf"(?P<sign>(?<![\w)\]}}])[-−])?(?P<num>{_UNSIGNED})(?:\s*/\s*(?P<den>{_UNSIGNED}))?")
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}")
_FRAC_SHORT_RE = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)")
_HASH_RE = re.compile(r"####\s*(.+)")


def _latex_to_plain(text: str) -> str:
    """``\\frac{3}{4}`` → ``3/4``, ``\\frac34`` → ``3/4``, ``1{,}000`` → ``1,000``, drop ``\\!``/``$``."""
    text = text.replace("{,}", ",").replace("\\!", "").replace("$", "")
    text = _FRAC_RE.sub(r"\1/\2", text)
    return _FRAC_SHORT_RE.sub(r"\1/\2", text)


def _to_float(match: re.Match[str]) -> float | None:
    value = float(match["num"].replace(",", ""))
    if match["den"] is not None:
        den = float(match["den"].replace(",", ""))
        if den == 0:
            return None
        value /= den
    return -value if match["sign"] else value


def last_number(text: str) -> float | None:
    """The last number in ``text`` (commas, decimals, sign, ``a/b`` and ``\\frac{a}{b}`` handled)."""
    found = None
    for match in NUMBER_RE.finditer(_latex_to_plain(text)):
        found = match
    return None if found is None else _to_float(found)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), nested braces matched."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0 or text[start:brace].strip() not in ("\\boxed", "\\fbox"):
        return None
    depth = 0
    for pos in range(brace, len(text)):
        depth += {"{": 1, "}": -1}.get(text[pos], 0)
        if depth == 0:
            return text[brace + 1 : pos]
    return None


def extract_number(text: str, mode: str = "auto") -> float | None:
    """``"last_number"``: last number; ``"boxed"``: last number inside the last ``\\boxed{}``;
    ``"auto"``: boxed if present, else the number after a GSM8K-style ``####``, else the last number."""
    if mode == "last_number":
        return last_number(text)
    boxed = last_boxed(text)
    if mode == "boxed":
        return None if boxed is None else last_number(boxed)
    if mode != "auto":
        raise ValueError(f"extract must be 'auto', 'last_number' or 'boxed', got {mode!r}")
    if boxed is not None:
        return last_number(boxed)
    marked = _HASH_RE.search(text)
    if marked is not None and last_number(marked.group(1)) is not None:
        return last_number(marked.group(1))
    return last_number(text)


def _reference_number(value: Any, i: int, key: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    number = extract_number(str(value), "auto")
    if number is None:
        raise ValueError(f"NumericAnswer: metadata row {i} {key!r}={value!r} holds no number")
    return number


class NumericAnswer(Reward):
    """1.0 if the completion's extracted number equals ``metadata[answer_key]``, else 0.0.

    Equal means ``|x − y| ≤ tolerance`` (absolute) or ``|x − y| ≤ tolerance · |y|`` (``relative``).
    The reference may be a number or a string parsed like a completion (``"3/4"``, ``"#### 1,234"``).
    Metric ``extracted``: 1 if a number was found in the completion.
    """

    def __init__(
        self,
        answer_key: str = "answer",
        extract: Literal["auto", "last_number", "boxed"] = "auto",
        tolerance: float = 1e-6,
        relative: bool = False,
        missing: Literal["raise", "nan"] = "raise",
    ) -> None:
        """
        Args:
            answer_key: metadata field holding the reference answer.
            extract: how to find the completion's answer (see :func:`extract_number`).
            tolerance: absolute (or relative) tolerance of the comparison.
            relative: compare with ``tolerance · |reference|``.
            missing: ``"raise"`` or ``"nan"`` when a row has no reference.
        """
        if extract not in ("auto", "last_number", "boxed"):
            raise ValueError(f"NumericAnswer: extract must be 'auto', 'last_number' or 'boxed', got {extract!r}")
        if tolerance < 0:
            raise ValueError(f"NumericAnswer: tolerance must be >= 0, got {tolerance}")
        self.answer_key, self.extract, self.tolerance, self.relative = answer_key, extract, float(tolerance), relative
        self.missing = check_missing("NumericAnswer", missing)

    def forward(self, samples: Samples) -> RewardOutput:
        rewards, extracted = [], []
        for i, completion in enumerate(samples.completions):
            ref = metadata_value(samples, i, self.answer_key, "NumericAnswer", self.missing)
            x = extract_number(completion, self.extract)
            extracted.append(float(x is not None))
            if ref is MISSING:
                rewards.append(math.nan)
                continue
            y = _reference_number(ref, i, self.answer_key)
            bound = self.tolerance * abs(y) if self.relative else self.tolerance
            rewards.append(float(x is not None and abs(x - y) <= bound))
        return RewardOutput(torch.tensor(rewards), {"extracted": torch.tensor(extracted)})


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
        missing: Literal["raise", "nan"] = "raise",
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
        out: list[float | None] = []
        for i, completion in enumerate(samples.completions):
            ref = metadata_value(samples, i, self.answer_key, "ExactMatch", self.missing)
            if ref is MISSING:
                out.append(None)
                continue
            refs = ref if isinstance(ref, (list, tuple)) else [ref]
            norm = lambda t: _normalize_text(str(t), self.ignore_case, self.normalize_whitespace)  # noqa: E731
            cand = self._candidate(completion)
            out.append(float(cand is not None and norm(cand) in {norm(r) for r in refs}))
        return out


class RegexMatch(Reward):
    """1.0 if the regex in ``metadata[pattern_key]`` matches the completion (search, or fullmatch)."""

    def __init__(
        self,
        pattern_key: str = "pattern",
        fullmatch: bool = False,
        ignore_case: bool = False,
        missing: Literal["raise", "nan"] = "raise",
    ) -> None:
        self.pattern_key, self.fullmatch = pattern_key, fullmatch
        self.flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
        self.missing = check_missing("RegexMatch", missing)

    def score(self, samples: Samples) -> list[float | None]:
        out: list[float | None] = []
        for i, completion in enumerate(samples.completions):
            pattern = metadata_value(samples, i, self.pattern_key, "RegexMatch", self.missing)
            if pattern is MISSING:
                out.append(None)
                continue
            try:
                regex = re.compile(str(pattern), self.flags)
            except re.error as err:
                raise ValueError(f"RegexMatch: metadata row {i} {self.pattern_key!r}={pattern!r} is not a regex: {err}") from err
            match = regex.fullmatch(completion.strip()) if self.fullmatch else regex.search(completion)
            out.append(float(match is not None))
        return out


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
        missing: Literal["raise", "nan"] = "raise",
    ) -> None:
        self.answer_key, self.letters = answer_key, letters
        self.missing = check_missing("MultipleChoice", missing)

    def _reference(self, ref: Any, i: int) -> str:
        if isinstance(ref, int) and not isinstance(ref, bool) and 0 <= ref < len(self.letters):
            return self.letters[ref]
        m = re.match(rf"\s*\(?([{re.escape(self.letters)}])(?![A-Za-z])", str(ref).upper())
        letter = m.group(1) if m else None
        if letter is None:
            raise ValueError(f"MultipleChoice: metadata row {i} {self.answer_key!r}={ref!r} is not one of {self.letters!r}")
        return letter

    def score(self, samples: Samples) -> list[float | None]:
        out: list[float | None] = []
        for i, completion in enumerate(samples.completions):
            ref = metadata_value(samples, i, self.answer_key, "MultipleChoice", self.missing)
            if ref is MISSING:
                out.append(None)
                continue
            out.append(float(extract_choice(completion, self.letters) == self._reference(ref, i)))
        return out
