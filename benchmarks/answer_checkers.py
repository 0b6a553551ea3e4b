"""NumericAnswer against MathVerify on the same answers: accuracy against hand labels, agreement, speed.

Four labelled groups of (completion, reference, truth):

* ``tasks``: completions of the built-in tasks (``addition``, ``two_step``, ``format``, held-out
  split) written the ways a model writes them (``357``, ``The answer is 357``, ``\\boxed{357}``,
  ``357.0``, ``<answer>357</answer>``), right and off by one;
* ``prose``: GSM8K-style worked answers;
* ``latex``: MATH-style LaTeX answers, some equal only symbolically (``2\\sqrt{2}`` = ``\\sqrt{8}``);
* ``hacks``: answers in which the reference number merely appears (``\\boxed{\\sqrt{2}}`` for 2).

    python benchmarks/answer_checkers.py              # prints the tables
    python benchmarks/answer_checkers.py --size 100   # task rows per built-in task (default 50)

Needs the ``math`` extra (``math-verify``).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lightning_trepo.data.tasks import generate_task  # noqa: E402
from reward_models import NumericAnswer, RewardError, Samples  # noqa: E402
from reward_models.mathverify import MathVerify  # noqa: E402

Case = tuple[str, str, int]  # completion, reference, truth (1 = correct)

PROSE: list[Case] = [
    ("She has 12 - 4 = 8 apples left.", "8", 1),
    ("Each box holds 6, so 4 boxes hold 24 eggs. The answer is 24.", "24", 1),
    ("He pays $1,250 in total.", "1250", 1),
    ("So the total is 18 dollars.\n#### 18", "#### 18", 1),
    ("The train travels 60 * 2.5 = 150 km.", "150", 1),
    ("Half of 30 is 15, so she keeps 15.", "15", 1),
    ("The answer is -7.", "-7", 1),
    ("It takes 45 minutes.", "0.75", 0),  # the right quantity in other units is not the reference
    ("She has 12 - 4 = 8 apples left.", "9", 0),
    ("The answer is 25%.", "25", 1),
    ("The answer is 3/4 of the cake.", "0.75", 1),
    ("The answer is 100 - done.", "100", 1),
]
LATEX: list[Case] = [
    ("\\boxed{\\frac{1}{2}}", "0.5", 1),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1),
    ("\\boxed{\\frac{\\pi}{2}}", "\\pi/2", 1),
    ("$x = \\frac{3}{4}$", "\\frac{3}{4}", 1),
    ("\\boxed{(1, 2)}", "(1,2)", 1),
    ("\\boxed{90^\\circ}", "90", 1),
    ("\\boxed{5\\text{ cm}}", "5", 1),
    ("\\boxed{1{,}000}", "1000", 1),
    ("\\boxed{\\dfrac{6}{4}}", "3/2", 1),
    ("\\boxed{-\\frac{1}{3}}", "-1/3", 1),
    ("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}", 0),
    ("\\boxed{x^2 + 1}", "x^2+1", 1),
    ("\\boxed{3}", "\\frac{6}{2}", 1),
]
HACKS: list[Case] = [
    ("\\boxed{\\sqrt{2}}", "2", 0),
    ("2\\pi", "2", 0),
    ("$2\\pi$", "2", 0),
    ("(3, 2)", "(1,2)", 0),
    ("x^2", "2", 0),
    ("$x^2$", "2", 0),
    ("so it is 2x", "2", 0),
    ("(1, 2)", "2", 0),
    ("5 - 3", "3", 0),
    ("2^{10}", "10", 0),
    ("\\boxed{2\\pi}", "2", 0),
    ("f(2)", "2", 0),
]


def task_cases(size: int) -> list[Case]:
    """Built-in held-out rows, each answered right in five styles and wrong (off by one) in two."""
    cases: list[Case] = []
    for task in ("addition", "two_step", "format"):
        for row in generate_task(task, "test", size, seed=1):
            a, b = int(row["answer"]), int(row["answer"]) + 1
            right = [f"{a}", f"The answer is {a}", f"\\boxed{{{a}}}", f"{a}.0", f"<answer>{a}</answer>"]
            wrong = [f"{b}", f"<answer>{b}</answer>"]
            cases += [(c, row["answer"], 1) for c in right] + [(c, row["answer"], 0) for c in wrong]
    return cases


def score_each(checker, cases: list[Case]) -> list[float]:
    """Per case, so that a reference one checker cannot read (an error) scores -1 there and nothing else."""
    out = []
    for completion, ref, _ in cases:
        try:
            out.append(
                checker(Samples(prompts=["p"], completions=[completion], metadata=[{"answer": ref}])).rewards.item()
            )
        except RewardError:
            out.append(-1.0)
    return out


def speed(checker, cases: list[Case]) -> float:
    """Samples per second of one batched call (every row distinct)."""
    samples = Samples(prompts=[str(i) for i in range(len(cases))], completions=[c for c, _, _ in cases],
                      metadata=[{"answer": g} for _, g, _ in cases])
    start = time.perf_counter()
    checker(samples)
    return len(cases) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=50, help="held-out rows per built-in task")
    args = parser.parse_args()
    groups = {"tasks": task_cases(args.size), "prose": PROSE, "latex": LATEX, "hacks": HACKS}
    checkers = {
        "NumericAnswer": NumericAnswer(),
        "MathVerify": MathVerify(),
        "MathVerify(latex)": MathVerify(extraction="latex"),
    }
    speed(checkers["MathVerify"], LATEX[:3])  # warm-up: the first parse builds math-verify's grammar
    print(f"{'group':<7} {'cases':>5} " + " ".join(f"{name:>18}" for name in checkers) + f" {'NA = MV':>8}")
    disagreements = []
    for group, cases in groups.items():
        scores = {name: score_each(checker, cases) for name, checker in checkers.items()}
        accs = [sum(int(r == t) for r, (_, _, t) in zip(scores[n], cases, strict=False)) / len(cases) for n in checkers]
        na, mv = scores["NumericAnswer"], scores["MathVerify"]
        agree = sum(int(x == y) for x, y in zip(na, mv, strict=False)) / len(cases)
        print(f"{group:<7} {len(cases):>5} " + " ".join(f"{a:>18.1%}" for a in accs) + f" {agree:>8.1%}")
        disagreements += [(group, c, g, t, x, y) for (c, g, t), x, y in zip(cases, na, mv, strict=False) if x != y]
    print("(accuracy against the hand labels; NA = MV: share of cases where NumericAnswer and MathVerify agree)")
    print("\nspeed, one batch of the tasks group (samples/s): " + ", ".join(
        f"{name} {speed(checker, groups['tasks']):,.0f}" for name, checker in checkers.items()))
    print("\ndisagreements, digits shown as 9 (score -1: the checker cannot read the reference):")
    patterns = Counter((group, re.sub(r"\d+", "9", c), re.sub(r"\d+", "9", g), t, x, y)
                       for group, c, g, t, x, y in disagreements)
    for (group, c, g, t, x, y), count in patterns.items():
        print(
            f"  {count:>4} x {group:<6} {c!r:<32} ref {g!r:<14} truth {t}  NumericAnswer {x:+.0f}  MathVerify {y:+.0f}"
        )


if __name__ == "__main__":
    main()
