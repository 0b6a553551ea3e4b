"""Format rewards: regex, tag structure, JSON validity. Scores are 1.0 / 0.0 (TagFormat may be partial).

They need no metadata, so they never score NaN; an empty completion is scored like any other text.
"""
from __future__ import annotations

import json
import re
from typing import Any, Literal

import torch

from reward_models.base import Reward, check_literal
from reward_models.types import RewardOutput, Samples


class RegexFormat(Reward):
    """1.0 if ``pattern`` matches the completion (``re.search``; ``fullmatch=True``: the stripped whole)."""

    def __init__(self, pattern: str, fullmatch: bool = False, ignore_case: bool = False, dotall: bool = True) -> None:
        """
        Args:
            pattern: a Python regular expression.
            fullmatch: require the whole (stripped) completion to match.
            ignore_case: ``re.IGNORECASE``.
            dotall: ``re.DOTALL`` (``.`` matches newlines).
        """
        flags = (re.IGNORECASE if ignore_case else 0) | (re.DOTALL if dotall else 0)
        try:
            self.regex = re.compile(pattern, flags)
        except re.error as err:
            raise ValueError(f"RegexFormat: pattern {pattern!r} is not a regex: {err}") from err
        self.fullmatch = fullmatch

    def score(self, samples: Samples) -> list[float]:
        match = self.regex.fullmatch if self.fullmatch else self.regex.search
        return [float(match(c.strip() if self.fullmatch else c) is not None) for c in samples.completions]


class TagFormat(Reward):
    """Tag structure, e.g. ``<think>…</think><answer>…</answer>``.

    A tag is well formed when ``<t>`` and ``</t>`` each occur exactly once, open before close.
    ``strict``: 1.0 iff the text is exactly the tags in order, separated only by whitespace.
    Not strict: 1.0 iff every tag is well formed and they appear in order (other text allowed).
    ``partial``: instead, the fraction of tags that are well formed (``k / K``), order ignored.
    ``prefix`` is prepended before checking (e.g. ``"<think>"`` when the prompt opens that tag).
    """

    def __init__(
        self,
        tags: list[str] = ["think", "answer"],  # noqa: B006 - never mutated; shows in --help
        strict: bool = True,
        partial: bool = False,
        prefix: str = "",
    ) -> None:
        if not tags:
            raise ValueError("TagFormat: tags must name at least one tag")
        self.tags, self.strict, self.partial, self.prefix = list(tags), strict, partial, prefix
        body = r"\s*".join(rf"<{re.escape(t)}>(?:(?!</?{re.escape(t)}>).)*</{re.escape(t)}>" for t in self.tags)
        self.structure = re.compile(rf"\s*{body}\s*" if strict else body, re.DOTALL)

    def _well_formed(self, text: str, tag: str) -> bool:
        opens, closes = text.count(f"<{tag}>"), text.count(f"</{tag}>")
        return opens == 1 and closes == 1 and text.index(f"<{tag}>") < text.index(f"</{tag}>")

    def _one(self, completion: str) -> float:
        text = self.prefix + completion
        ok = [self._well_formed(text, t) for t in self.tags]
        if self.partial:
            return sum(ok) / len(ok)
        if not all(ok):
            return 0.0
        match = self.structure.fullmatch(text) if self.strict else self.structure.search(text)
        return float(match is not None)

    def score(self, samples: Samples) -> list[float]:
        return [self._one(c) for c in samples.completions]


_FENCE_RE = re.compile(r"```(?:json|JSON)?\s*\n(.*?)```", re.DOTALL)


def parse_json(text: str, extract: str = "auto") -> tuple[bool, Any]:
    """(parsed?, value). ``"full"``: the whole stripped text; ``"fenced"``: the last ```` ``` ```` block;
    ``"auto"``: the fenced block if any, else the whole text, else the outermost ``{…}`` span."""
    candidates: list[str] = []
    fences = _FENCE_RE.findall(text)
    if extract in ("fenced", "auto") and fences:
        candidates.append(fences[-1])
    if extract == "full" or (extract == "auto" and not fences):
        candidates.append(text)
        if extract == "auto" and "{" in text and "}" in text:
            candidates.append(text[text.index("{") : text.rindex("}") + 1])
    for candidate in candidates:
        try:
            return True, json.loads(candidate.strip())
        except ValueError:
            continue
    return False, None


JsonExtract = Literal["auto", "full", "fenced"]


class JsonFormat(Reward):
    """1.0 if the completion holds valid JSON and, when ``required_keys`` is set, it is an object
    with all of them. Metric ``valid``: the JSON parsed (whatever its keys)."""

    def __init__(
        self, required_keys: list[str] | None = None, extract: JsonExtract = "auto"
    ) -> None:
        check_literal("JsonFormat", "extract", extract, JsonExtract)
        self.required_keys, self.extract = list(required_keys or []), extract

    def forward(self, samples: Samples) -> RewardOutput:
        rewards, valid = [], []
        for completion in samples.completions:
            ok, value = parse_json(completion, self.extract)
            has_keys = not self.required_keys or (
                isinstance(value, dict) and all(k in value for k in self.required_keys)
            )
            valid.append(float(ok))
            rewards.append(float(ok and has_keys))
        return RewardOutput(torch.tensor(rewards), {"valid": torch.tensor(valid)})
