"""Find the numeric final answer of a completion, strictly: a number that is PART of a larger expression
is no answer.

The answer is the content of the last ``\\boxed{}``, else the text after a GSM8K ``####``, else the
last number of the text. It counts only when it is a plain number (``85``, ``-0.5``, ``1,234``,
``3/4``, ``\\frac{3}{4}``, ``85.0``, ``x = 5``, ``5 cm``, ``85\\%``) or a bracketed tuple of numbers
(``(1, 2)``). A number glued to an expression (``\\sqrt{2}``, ``2\\pi``, ``x^2``, ``2x``, ``5-3``,
``f(2)``, ``2 \\cdot 3``) is not an answer: ``\\boxed{\\sqrt{2}}`` holds no number, so it can never
match a gold ``2``. Answers that need algebra are the :class:`~reward_models.MathVerify` leaf's job.
"""
from __future__ import annotations

import re

_UNSIGNED = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+"
# A sign counts only when not glued to a word or closing bracket ("5-3" is 5 and 3, "x=-3" is -3).
NUMBER_RE = re.compile(rf"(?P<sign>(?<![\w)\]}}])[-−])?(?P<num>{_UNSIGNED})(?:\s*/\s*(?P<den>{_UNSIGNED}))?")
_ITEM = rf"[-−]?(?:{_UNSIGNED})(?:\s*/\s*(?:{_UNSIGNED}))?"
# A bracketed tuple of at least two numbers, tried before a lone number at every position.
ATOM_RE = re.compile(rf"(?P<open>[(\[])\s*(?P<items>{_ITEM}(?:\s*,\s*{_ITEM})+)\s*(?P<close>[)\]])|{NUMBER_RE.pattern}")
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}")
_FRAC_SHORT_RE = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)")
_HASH_RE = re.compile(r"####\s*(.+)")
_TEXT_RE = re.compile(r"\\(?:text\w*|math(?:rm|bf|it)|mbox)\s*\{([^{}]*)\}")
# Markup that carries no maths: dropped before looking for the answer.
_DROP_RE = re.compile(r"\\[$%,;:!]|\\left|\\right|\^\s*\{?\s*\\circ\s*\}?|°|%|\$")
# LaTeX commands that do not make the number next to them part of an expression.
_LAYOUT = r"(?:text\w*|math(?:rm|bf|it)|mbox|boxed|fbox|q?quad|displaystyle|begin|end|label|tag|hline|newline|" \
          r"implies|Rightarrow|rightarrow|Longrightarrow|to|therefore|approx|[lc]?dots)(?![A-Za-z])"
_GLUED_BEFORE = re.compile(rf"""(?:
    [A-Za-z0-9_^\\]$                               # x2, 10^2, \\sqrt2
  | [*/×·÷]\s*$                                     # 2*3, 6/ 3
  | (?:[\d)}}\]]|(?<![A-Za-z])[A-Za-z])\s*[-+−]\s*$   # binary plus or minus after an operand: 5 + 3, x - 3
  | \\(?!{_LAYOUT})[A-Za-z]+\s*\{{?\s*$             # a command's argument: \\sqrt{{2}}, \\log 2
  | [\^_}}]\s*\{{\s*$                               # a superscript, subscript or second argument: x^{{2}}, {{a}}{{2}}
  | [A-Za-z]\($                                     # a function argument: f(2)
)""", re.VERBOSE)
_BINARY_SIGN = re.compile(r"(?:[\d)}\]]|(?<![A-Za-z])[A-Za-z])\s*$")  # a sign after an operand is a minus
_GLUED_AFTER = re.compile(rf"""^(?:
    [A-Za-z_^(\[{{]                                 # 2x, 2^3, 2_1, 2(3)
  | \s*\\(?!{_LAYOUT})[A-Za-z]+                     # 2\\pi, 2 \\sqrt{{3}}, 2 \\cdot 3
  | \s*[*/×·÷^]                                     # 2 * 3, 2 ^ 3
  | \s*[-+−]\s*(?:\d|\\|\(|[A-Za-z](?![A-Za-z]))    # 2 + x, 2 - \\sqrt{{3}} (not a dash before a word)
)""", re.VERBOSE)

Answer = tuple[str, tuple[float, ...]]
"""A numeric answer: its brackets (``""`` for a plain number, ``"()"``, ``"[]"``) and its values."""


def normalize_latex(text: str) -> str:
    """Plain text for number finding: ``\\frac{3}{4}`` → ``3/4``, ``1{,}000`` → ``1,000``, ``\\text{ cm}`` →
    `` cm``; dollar signs, percent signs, degrees, ``\\left``/``\\right`` and LaTeX spacing dropped."""
    text = text.replace("{,}", ",").replace("\\ ", " ")
    text = _TEXT_RE.sub(r" \1 ", text)
    text = _DROP_RE.sub("", text)
    text = _FRAC_RE.sub(r"\1/\2", text)
    return _FRAC_SHORT_RE.sub(r"\1/\2", text)


def _item_value(text: str) -> float | None:
    match = NUMBER_RE.fullmatch(text.strip())
    return None if match is None else number_value(match)


def number_value(match: re.Match[str]) -> float | None:
    """The value of a :data:`NUMBER_RE` match (None for a zero denominator)."""
    value = float(match["num"].replace(",", ""))
    if match["den"] is not None:
        den = float(match["den"].replace(",", ""))
        if den == 0:
            return None
        value /= den
    return -value if match["sign"] else value


def _atom_value(match: re.Match[str]) -> Answer | None:
    if match["open"] is None:
        value = number_value(match)
        return None if value is None else ("", (value,))
    values = [_item_value(item) for item in re.split(r"\s*,\s*", match["items"])]
    if any(v is None for v in values):
        return None
    return match["open"] + match["close"], tuple(v for v in values if v is not None)


def _glued(text: str, match: re.Match[str]) -> bool:
    """Whether the number or tuple ``match`` is part of a larger expression in ``text``."""
    before, after = text[: match.start()], text[match.end():]
    if match["open"] is None and match["sign"] and _BINARY_SIGN.search(before):
        return True  # "5 -3": a minus between two operands, not a sign
    return bool(_GLUED_BEFORE.search(before) or _GLUED_AFTER.match(after))


def answer_in(text: str, only: bool = False) -> Answer | None:
    """The last number or tuple of ``text`` (normalised), None if there is none or it is glued to an
    expression; with ``only``, None also when ``text`` holds more than one (a box must hold one answer)."""
    plain = normalize_latex(text)
    atoms = list(ATOM_RE.finditer(plain))
    if not atoms or (only and len(atoms) > 1) or _glued(plain, atoms[-1]):
        return None
    return _atom_value(atoms[-1])


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


def extract_answer(text: str, mode: str = "auto") -> Answer | None:
    """``"last_number"``: the last number; ``"boxed"``: the one answer inside the last ``\\boxed{}``;
    ``"auto"``: the box if present, else the one answer after a GSM8K-style ``####``, else the last
    number. None when there is none or it is part of an expression (see the module docstring)."""
    if mode == "last_number":
        return answer_in(text)
    if mode not in ("auto", "boxed"):
        raise ValueError(f"extract must be 'auto', 'last_number' or 'boxed', got {mode!r}")
    boxed = last_boxed(text)
    if boxed is not None or mode == "boxed":
        return None if boxed is None else answer_in(boxed, only=True)
    marked = _HASH_RE.search(text)
    if marked is not None and answer_in(marked.group(1), only=True) is not None:
        return answer_in(marked.group(1), only=True)
    return answer_in(text)


def extract_number(text: str, mode: str = "auto") -> float | None:
    """Like :func:`extract_answer`, for a single number (None for a tuple)."""
    answer = extract_answer(text, mode)
    return answer[1][0] if answer is not None and not answer[0] else None


def last_number(text: str) -> float | None:
    """The last number in ``text`` unless it is part of an expression (see the module docstring)."""
    return extract_number(text, "last_number")
