"""Built-in tasks: answers recomputed from the prompt text, disjoint splits, determinism."""
from __future__ import annotations

import re

import pytest

from lightning_trepo.data import TASKS, BuiltinTaskSource, generate_task

ADDITION = re.compile(r"^(\d+)\+(\d+)=$")
FORMAT = re.compile(r"^Answer as <answer>N</answer>\. (\d+)\+(\d+)=$")
TWO_STEP = re.compile(r"^([A-Z][a-z]+) has (\d+) ([a-z]+), ([a-z]+) (\d+), ([a-z]+) (\d+)\. \1 now has $")
CALCULATOR = re.compile(r"^(\d+)\*(\d+)=\? Call <calc>\1\*\2</calc> then answer\.$")
SIGN = {"buys": 1, "finds": 1, "gets": 1, "eats": -1, "loses": -1, "sells": -1}


def recompute(row: dict) -> int:
    """The answer derived by parsing the prompt text only."""
    if row["task"] == "addition":
        a, b = ADDITION.match(row["prompt"]).groups()
        return int(a) + int(b)
    if row["task"] == "format":
        a, b = FORMAT.match(row["prompt"]).groups()
        return int(a) + int(b)
    if row["task"] == "calculator":
        a, b = CALCULATOR.match(row["prompt"]).groups()
        return int(a) * int(b)
    _, start, _, verb1, n1, verb2, n2 = TWO_STEP.match(row["prompt"]).groups()
    after_first = int(start) + SIGN[verb1] * int(n1)
    assert after_first >= 0  # counts never go negative, not even in between
    return after_first + SIGN[verb2] * int(n2)


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("digits", [1, 2, 3])
def test_answers_match_the_prompt(task: str, digits: int) -> None:
    rows = generate_task(task, "train", size=60, seed=3, digits=digits)
    for row in rows:
        assert row["task"] == task
        assert row["answer"] == str(recompute(row)), row
        assert row["prompt"].isascii() and row["answer"].isascii()
        assert len(row["prompt"]) <= 64  # fits the char model's context with room for the answer
    if task != "two_step":  # operands have at most `digits` digits
        assert max(max(r["operands"]) for r in rows) < 10**digits


def test_format_rows_carry_a_regex_the_expected_completion_matches() -> None:
    for row in generate_task("format", "test", size=20, seed=0):
        match = re.match(row["format_regex"], f"<answer>{row['answer']}</answer>")
        assert match is not None and match.group(1) == row["answer"]
        assert re.match(row["format_regex"], row["answer"]) is None  # the bare number is not the format


@pytest.mark.parametrize("task", sorted(TASKS))
def test_train_and_held_out_never_overlap(task: str) -> None:
    train = {r["prompt"] for r in generate_task(task, "train", size=2000, seed=0)}
    for seed in (0, 1, 7):
        test = {r["prompt"] for r in generate_task(task, "test", size=400, seed=seed)}
        assert len(test) == 400  # unique within the split
        assert not train & test


def test_held_out_sums_are_unseen_in_either_order_and_by_either_task() -> None:
    def sums(task: str, split: str) -> set[tuple[int, int]]:
        return {tuple(sorted(r["operands"])) for r in generate_task(task, split, size=1500, seed=0)}

    train = sums("addition", "train") | sums("format", "train")
    held_out = sums("addition", "test") | sums("format", "test")
    assert not train & held_out


def test_generation_is_deterministic_in_the_seed() -> None:
    assert generate_task("two_step", "train", 50, seed=5) == generate_task("two_step", "train", 50, seed=5)
    assert generate_task("two_step", "train", 50, seed=5) != generate_task("two_step", "train", 50, seed=6)
    assert BuiltinTaskSource("format", "test", 30, seed=2).load() == generate_task("format", "test", 30, seed=2)


def test_split_aliases_and_bad_names() -> None:
    assert generate_task("addition", "validation", 10) == generate_task("addition", "test", 10)
    with pytest.raises(ValueError, match=r"unknown built-in task 'multiply'.*addition.*format.*two_step"):
        BuiltinTaskSource(task="multiply")
    with pytest.raises(ValueError, match=r"unknown split 'dev'"):
        generate_task("addition", "dev", 10)


def test_too_small_a_problem_space_errors_unless_sampling_with_replacement() -> None:
    # digits=1: 100 ordered sums in all, about 20% of them held out, so 100 unique test rows cannot exist
    with pytest.raises(ValueError, match=r"only \d+ distinct 'test' problems.*unique=False"):
        generate_task("addition", "test", size=100, digits=1)
    rows = generate_task("addition", "test", size=100, digits=1, unique=False)
    assert len(rows) == 100 and len({r["prompt"] for r in rows}) < 100
    train = {r["prompt"] for r in generate_task("addition", "train", size=60, digits=1)}
    assert not train & {r["prompt"] for r in rows}
