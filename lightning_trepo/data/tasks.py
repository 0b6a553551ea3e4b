"""Built-in verifiable tasks, generated from a seed, with disjoint train / held-out splits.

Every row is a dict ``{"prompt": str, "answer": str, "task": str, ...}``: ``answer`` is the
reference, a non-negative integer written in decimal ASCII. Prompts are ASCII and short (under
~60 characters with the default ``digits=2``) so the built-in character-level model can read them.
The expected completion is the text below followed by the end-of-sequence token.

``addition``
    prompt ``"12+345="``, completion ``"357"``. Operands are drawn uniformly from
    ``[0, 10**digits)``. Extra columns: ``operands`` (list of the two ints).
``two_step``
    prompt ``"Tom has 12 pens, buys 5, eats 3. Tom now has "``, completion ``"14"``. One
    person, one item, two changes (each a gain or a loss; counts never go negative). Starting
    counts are drawn from ``[1, 10**digits)``, changes from ``[1, 10**digits // 2]`` (at least 1).
    Extra columns: ``operands`` (start, first change, second change, signed).
``calculator``
    prompt ``"Use <calc>EXPR</calc> then answer. 347*58="``, completion e.g.
    ``"<calc>347*58</calc>"``, then (after the tool's ``20126``) ``"20126"``: multi-turn with
    :class:`lightning_trepo.envs.ToolEnv` and a :class:`~lightning_trepo.envs.Calculator`. The first operand has
    ``digits`` digits, the second ``min(digits, 2)`` (``digits=3``: 3-digit x 2-digit products; ``digits=1``: 0..9
    both). Extra columns: ``operands``.
``format``
    prompt ``"Answer as <answer>N</answer>. 12+34="``, completion ``"<answer>46</answer>"``.
    The reference ``answer`` is still the bare number (``"46"``); the required shape is in the
    ``format_regex`` column (``^<answer>(\\d+)</answer>$``, group 1 is the number) so a format
    reward can check it. Extra columns: ``operands``.

Splits: a problem belongs to the held-out split (``"test"``, aliases ``"val"``, ``"validation"``,
``"held_out"``) when the SHA-256 hash of its canonical key falls in the lowest
``HELD_OUT_PERCENT`` percent, otherwise to ``"train"``. The split depends only on the problem, never
on the seed, so train and held-out rows never overlap for any pair of seeds. Sums are keyed by
their sorted operands (``12+34`` and ``34+12`` share a split) and ``addition`` and ``format`` use the
same key, so a held-out sum is not seen in training by either task. The seed only decides which
problems of the split are drawn, and in which order.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import Any

__all__ = [
    "HELD_OUT_PERCENT",
    "TASKS",
    "addition_problem",
    "calculator_problem",
    "format_problem",
    "generate_task",
    "is_held_out",
    "two_step_problem",
]

HELD_OUT_PERCENT = 20
"""Share (in percent) of each task's problem space that belongs to the held-out split."""

_SPLITS = {"train": "train", "test": "test", "val": "test", "validation": "test", "held_out": "test"}
_NAMES = ("Tom", "Ann", "Bob", "Eva", "Sam", "Mia", "Max", "Zoe")
_ITEMS = ("apples", "pens", "coins", "cards", "eggs", "books", "shells", "stamps")
_GAINS = ("buys", "finds", "gets")
_LOSSES = ("eats", "loses", "sells")
FORMAT_REGEX = r"^<answer>(\d+)</answer>$"

Problem = tuple[str, dict[str, Any]]
"""A generated problem: (canonical split key, row)."""


def is_held_out(key: str) -> bool:
    """Whether the problem with canonical ``key`` belongs to the held-out split (stable hash)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < HELD_OUT_PERCENT


def _operands(rng: random.Random, digits: int) -> tuple[int, int]:
    high = 10**digits - 1
    return rng.randint(0, high), rng.randint(0, high)


def addition_problem(rng: random.Random, digits: int) -> Problem:
    """``"a+b="`` -> ``"a+b"`` as text; operands uniform in ``[0, 10**digits)``."""
    a, b = _operands(rng, digits)
    row = {"prompt": f"{a}+{b}=", "answer": str(a + b), "task": "addition", "operands": [a, b]}
    return f"sum:{min(a, b)},{max(a, b)}", row


def format_problem(rng: random.Random, digits: int) -> Problem:
    """``"Answer as <answer>N</answer>. a+b="`` -> ``"<answer>{a+b}</answer>"``; answer column = a+b."""
    a, b = _operands(rng, digits)
    row = {
        "prompt": f"Answer as <answer>N</answer>. {a}+{b}=",
        "answer": str(a + b),
        "task": "format",
        "operands": [a, b],
        "format_regex": FORMAT_REGEX,
    }
    return f"sum:{min(a, b)},{max(a, b)}", row


def calculator_problem(rng: random.Random, digits: int) -> Problem:
    """``"a*b=? Call <calc>a*b</calc> then answer."`` -> ``a*b``; a has ``digits`` digits, b ``min(digits, 2)``.

    The prompt names the call to make: the skill to learn is the episode (call, stop, read the result, answer with
    it alone). A placeholder such as ``<calc>EXPR</calc>`` made SmolLM2-135M-Instruct copy the placeholder: 0 of
    128 sampled episodes called the calculator on the right product (docs/smollm2.md)."""
    low = 0 if digits == 1 else 10 ** (digits - 1)
    a, b = rng.randint(low, 10**digits - 1), rng.randint(min(low, 10), 10 ** min(digits, 2) - 1)
    row = {"prompt": f"{a}*{b}=? Call <calc>{a}*{b}</calc> then answer.",
           "answer": str(a * b), "task": "calculator", "operands": [a, b]}
    return f"mul:{a},{b}", row


def two_step_problem(rng: random.Random, digits: int) -> Problem:
    """``"{name} has {x} {item}, {verb} {y}, {verb} {z}. {name} now has "`` -> the final count."""
    start = rng.randint(1, 10**digits - 1)
    step_high = max(1, 10**digits // 2)
    count, changes, clauses = start, [], []
    for _ in range(2):
        gain = count <= 1 or rng.random() < 0.5
        size = rng.randint(1, step_high if gain else min(step_high, count - 1))
        count += size if gain else -size
        changes.append(size if gain else -size)
        clauses.append(f"{rng.choice(_GAINS if gain else _LOSSES)} {size}")
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    prompt = f"{name} has {start} {item}, {clauses[0]}, {clauses[1]}. {name} now has "
    row = {"prompt": prompt, "answer": str(count), "task": "two_step", "operands": [start, *changes]}
    return f"two_step:{start},{changes[0]},{changes[1]}", row


TASKS: dict[str, Callable[[random.Random, int], Problem]] = {
    "addition": addition_problem,
    "two_step": two_step_problem,
    "format": format_problem,
    "calculator": calculator_problem,
}
"""Task name -> problem generator ``(rng, digits) -> (split key, row)``."""


def _stream_seed(task: str, split: str, seed: int) -> int:
    """A stable 64-bit seed for one (task, split, seed) stream (no reliance on ``hash()``)."""
    digest = hashlib.sha256(f"{task}|{split}|{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _check_args(task: str, split: str, size: int, digits: int) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown built-in task {task!r}; valid tasks: {sorted(TASKS)}")
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r} for built-in task {task!r}; valid splits: {sorted(_SPLITS)}")
    if size < 1:
        raise ValueError(f"built-in task {task!r}: size must be >= 1, got {size}")
    if digits < 1:
        raise ValueError(f"built-in task {task!r}: digits must be >= 1, got {digits}")
    return _SPLITS[split]


def generate_task(
    task: str = "addition",
    split: str = "train",
    size: int = 2000,
    seed: int = 0,
    digits: int = 2,
    unique: bool = True,
) -> list[dict[str, Any]]:
    """``size`` rows of ``task`` from ``split``, deterministic in ``(task, split, seed, digits)``.

    Problems are drawn from the generator and kept only when their split matches. With
    ``unique=True`` a prompt appears at most once; when the split has fewer distinct problems than
    ``size`` this raises a ``ValueError`` (lower ``size``, raise ``digits`` or set ``unique=False``,
    which samples with replacement, still never crossing splits).
    """
    want = _check_args(task, split, size, digits)
    generator, rng = TASKS[task], random.Random(_stream_seed(task, want, seed))
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    max_draws, draws = 50 * size + 10_000, 0
    while len(rows) < size:
        if draws >= max_draws:
            raise ValueError(
                f"built-in task {task!r} (digits={digits}) has only {len(rows)} distinct {want!r} problems "
                f"found in {draws} draws, fewer than size={size}; lower size, raise digits or set unique=False"
            )
        draws += 1
        key, row = generator(rng, digits)
        if is_held_out(key) != (want == "test") or (unique and row["prompt"] in seen):
            continue
        seen.add(row["prompt"])
        rows.append(row)
    return rows
