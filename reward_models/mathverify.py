"""``MathVerify``: math answers checked as the field checks them, with Hugging Face's ``math-verify``.

``math-verify`` parses LaTeX and plain expressions into SymPy and compares them symbolically
(``\\frac{1}{2}`` = ``0.5``, ``\\sqrt{8}`` = ``2\\sqrt{2}``, sets, intervals, matrices). It is the
checker behind TRL's ``accuracy_reward`` and Open R1. Needs the ``math`` extra:
``pip install 'lightning-trepo[math]'``.
"""
from __future__ import annotations

import math
import re
import threading
from typing import Any, Literal

import torch

from reward_models.base import MISSING, Missing, OnError, Reward, check_literal, check_missing, metadata_value
from reward_models.types import RewardOutput, Samples

_DELIMITED = re.compile(r"\$|\\\(|\\\[|\\boxed|\\fbox")


def _math_verify() -> Any:
    try:
        import math_verify
    except ImportError as err:
        raise ImportError("MathVerify needs the `math-verify` package: pip install 'lightning-trepo[math]'") from err
    return math_verify


Extraction = Literal["any", "latex"]


class MathVerify(Reward):
    """1.0 if ``math-verify`` finds the completion's answer equal to ``metadata[answer_key]``, else 0.0.

    The completion's answer is the last ``\\boxed{}`` when there is one, else the first LaTeX
    (``$…$``, ``\\(…\\)``) answer, else (``extraction="any"``) the first plain expression. The
    reference is read as one LaTeX expression (``x^2 + 1``, ``(1,2)``, ``\\frac{1}{2}``, ``#### 18``)
    unless it holds its own delimiters (``$…$``, ``\\boxed{}``: a worked solution, parsed as is); one
    that does not parse raises a ``ValueError`` naming the row (like ``NumericAnswer``).
    A missing reference follows ``missing``; a failure of math-verify itself follows ``on_error``.
    Metric ``extracted``: 1 if an answer was parsed from the completion.
    """

    def __init__(
        self,
        answer_key: str = "answer",
        extraction: Extraction = "any",
        float_rounding: int = 6,
        parsing_timeout: int | None = 5,
        missing: Missing = "raise",
        on_error: OnError = "raise",
        timeout: float | None = None,
    ) -> None:
        """
        Args:
            answer_key: metadata field holding the reference answer.
            extraction: ``"any"`` (LaTeX, then plain expressions such as ``85`` or ``1/2``) or ``"latex"``
                (LaTeX only, as TRL's ``accuracy_reward``: unformatted numbers are not read).
            float_rounding: decimal places numbers are rounded to before comparing.
            parsing_timeout: seconds math-verify may spend per parse/compare (applied only in the main
                thread, where its signal-based timer works); None = no limit.
            missing: ``"raise"`` or ``"nan"`` when a row has no reference.
            on_error: ``"raise"`` or ``"nan"`` (NaN + ``failed`` metric), see :class:`Reward`.
            timeout: seconds per call of the whole node, None = no limit.
        """
        check_literal("MathVerify", "extraction", extraction, Extraction)
        if float_rounding < 0:
            raise ValueError(f"MathVerify: float_rounding must be >= 0, got {float_rounding}")
        self.set_policy(on_error, timeout)
        self.answer_key, self.extraction, self.float_rounding = answer_key, extraction, float_rounding
        self.parsing_timeout = parsing_timeout
        self.missing = check_missing("MathVerify", missing)
        mv = _math_verify()
        self._mv = mv
        configs = [mv.LatexExtractionConfig(boxed_match_priority=0)]
        self._configs = configs + ([mv.ExprExtractionConfig()] if extraction == "any" else [])

    def _timer(self) -> int | None:
        return self.parsing_timeout if threading.current_thread() is threading.main_thread() else None

    def _gold(self, value: Any, i: int) -> list[Any]:
        text = str(value)
        # A bare reference is one LaTeX expression ("x^2 + 1", "(1,2)"): math-verify's default parse of
        # undelimited text would keep only a number it finds ("x^2 + 1" -> 1). Delimited text is parsed as is.
        candidates = (text,) if _DELIMITED.search(text) else (f"${text}$", text)
        for candidate in candidates:
            parsed = self._mv.parse(candidate, parsing_timeout=self._timer())
            if parsed:
                return parsed
        raise ValueError(
            f"MathVerify: metadata row {i} {self.answer_key!r}={value!r} is not an answer math-verify can parse"
        )

    def forward(self, samples: Samples) -> RewardOutput:
        rewards, extracted, golds = [], [], {}
        for i, completion in enumerate(samples.completions):
            ref = metadata_value(samples, i, self.answer_key, "MathVerify", self.missing)
            answer = self._mv.parse(completion, extraction_config=self._configs, extraction_mode="first_match",
                                    parsing_timeout=self._timer())
            extracted.append(float(bool(answer)))
            if ref is MISSING:
                rewards.append(math.nan)
                continue
            key = str(ref)
            if key not in golds:
                golds[key] = self._gold(ref, i)
            ok = bool(answer) and self._mv.verify(golds[key], answer, float_rounding=self.float_rounding,
                                                  timeout_seconds=self._timer())
            rewards.append(float(ok))
        return RewardOutput(torch.tensor(rewards), {"extracted": torch.tensor(extracted)})
