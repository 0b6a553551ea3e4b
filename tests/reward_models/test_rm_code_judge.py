"""Assert tests judged outside the program: splitting, the strict value codec, the host judge and
the clean judge sandbox, and per-row failure of unscorable sandbox output."""
import math

import pytest
from rm_helpers import assert_close, nan, samples

from reward_models._sandbox_boot import encode
from reward_models.code import CodeExecution
from reward_models.code_tests import host_judgeable, judge_in_host, judge_in_sandbox, split_test, split_tests
from reward_models.sandbox import SandboxLimits, SandboxResult, decode_value, parse_results

FAST = SandboxLimits(cpu_time=1, wall_time=3, memory_mb=256)


@pytest.mark.parametrize("test, calls, judge", [
    ("assert add(1, 2) == 3", ("add(1, 2)",), "assert __v0 == 3"),
    ("assert x == 1", ("x",), "assert __v0 == 1"),
    ("assert True", (), "assert True"),
    ("assert f() == 2 - 1", ("f()",), "assert __v0 == 2 - 1"),  # the expected side stays in the judge
    ("assert Solution().two([2, 7], 9)[0] == 1", ("Solution().two([2, 7], 9)[0]",), "assert __v0 == 1"),
    ("from solution import add\nassert add(-1, b=2) == 1", ("add(-1, b=2)",), "assert __v0 == 1"),
    ("assert sorted(f([3, 1])) == [1, 3]", ("f([3, 1])",), "assert sorted(__v0) == [1, 3]"),
    ("assert f(1) + g(2) == 3, 'sum'", ("f(1)", "g(2)"), "assert __v0 + __v1 == 3, 'sum'"),
    ("x = f(2)\nassert x == 4", ("f(2)",), "x = __v0\nassert x == 4"),
    ("import math\nassert math.isclose(f(2), 1.41)", ("f(2)",), "import math\nassert math.isclose(__v0, 1.41)"),
])
def test_split_sends_only_program_chains_with_literal_arguments(test, calls, judge):
    split = split_test(test)
    assert split.calls == calls and split.judge == judge


@pytest.mark.parametrize("test, reason", [
    ("check(add)", "not literals"),  # HumanEval's check(candidate): not split, CodeExecution proxies it
    ("assert all(f(x) for x in range(3))", "not literals"),
    ("assert f(g(1)) == 2", "not literals"),
    ("try:\n    f()\nexcept ValueError:\n    pass", "Try statement"),
    ("def t():\n    assert f() == 1", "FunctionDef statement"),
    ("assert f(", "not valid Python"),
])
def test_tests_the_host_cannot_judge_are_refused(test, reason):
    with pytest.raises(ValueError, match=reason):
        split_test(test)
    with pytest.raises(ValueError, match=r"row 4 'tests' test 1 cannot be judged outside the program"):
        split_tests(["assert True", test], 4, "tests")


def test_calls_are_numbered_across_a_rows_tests():
    a, b = split_tests(["assert f(1) == 1", "assert f(2) + f(3) == 5"], 0, "tests")
    assert (a.first, b.first, b.judge) == (0, 1, "assert __v1 + __v2 == 5")


def test_host_judge_compares_plain_values_with_python_semantics():
    split = split_test("assert f() == (1, 2)")
    assert host_judgeable(split)
    assert judge_in_host(split, {"__v0": (1, 2)})
    assert not judge_in_host(split, {"__v0": [1, 2]})  # a list is not the tuple the test expects
    close = split_test("assert abs(f() - 0.3) < 1e-9")
    assert judge_in_host(close, {"__v0": 0.1 + 0.2}) and not judge_in_host(close, {"__v0": 0.31})
    assert not judge_in_host(split_test("assert len(f()) == 2"), {"__v0": 5})  # TypeError: a failed test


@pytest.mark.parametrize("test", ["import math\nassert math.isclose(f(), 1)", "assert 2 ** f() == 8",
                                  "assert f() * g() == 'aa'", "assert f() * 10**6 == 10**6", "assert f() ** 65 == 0",
                                  "assert [y for y in f()] == [1]", "x = f()\nassert x", "assert bytes(f()) == b''"])
def test_unbounded_or_non_expression_judges_go_to_the_sandbox(test):
    # 2 ** f(): the program would pick the exponent; f() * 10**6: a 64 KB string would become 64 GB in the host
    assert not host_judgeable(split_test(test))
    assert host_judgeable(split_test("assert f() * 3 == 6 and f() ** 2 == 4 and 2 * g() << 1 == 8"))


def test_judge_sandbox_holds_only_values():
    tests = [split_test("import math\nassert math.isclose(f(2), 1.41, rel_tol=1e-2)", 0),
             split_test("x = f(2)\nassert x == (4,)", 1), split_test("x = f(2)\nassert x == (4,)", 2)]
    values = [{"__v0": 1.414}, {"__v1": (4,)}, {"__v2": [4]}]
    # 1.414 is within 1 % of 1.41; (4,) == (4,); [4] != (4,)
    assert judge_in_sandbox(list(zip(tests, values, strict=True)), FAST, None) == [True, True, False]


@pytest.mark.parametrize("value", [None, True, 3, -2.5, "s", [1, [2]], (1, (2,)), {1, 2}, frozenset({3}),
                                   {"a": (1,), 2: [3]}, b"\x00\xff", 1 + 2j, range(1, 7, 2)])
def test_codec_round_trips_plain_values(value):
    decoded = decode_value(encode(value))
    assert decoded == value and type(decoded) is type(value)


def test_codec_materialises_iterators_and_refuses_objects():
    assert list(decode_value(encode(iter([1, 2])))) == [1, 2]
    with pytest.raises(TypeError, match="not a plain value"):
        encode(type("A", (), {"__eq__": lambda s, o: True})())
    with pytest.raises(TypeError):
        encode(type("I", (int,), {})(3))  # a subclass of int is not an int here
    for bad in ({"tuple": [1], "x": 1}, {"eval": "1"}, {"dict": [[1]]}, {"bytes": 5}, {"range": ["a"]},
                {"range": [10**18]}, {"set": [[1]]}):  # a huge range; an unhashable set item
        with pytest.raises((ValueError, TypeError)):
            decode_value(bad)


def test_results_file_is_parsed_strictly():
    def parsed(raw: bytes, n: int = 2, cap: int = 1000) -> SandboxResult:
        res = SandboxResult(0, "", "", False, 0.0)
        parse_results(raw, cap, n, res)
        return res

    ok = parsed(b'{"load": null}\n{"value": 3}\n{"error": "ZeroDivisionError"}\n')
    assert ok.calls == [(True, 3), (False, "ZeroDivisionError")] and ok.bad_result is None
    died = parsed(b'{"load": null}\n{"value": 3}\n')  # the program died during the second call
    assert died.calls == [(True, 3), (False, "no result")] and died.bad_result is None
    for raw in (b'{"load": null}\n{"value": 3}\n{"value": 3}\n{"value": 3}\n',  # one line too many
                b'I [0]\n', b'{"load": null}\n{"value": {"eval": 1}}\n', b'{"load": null}\n{"value": 3',
                b'{"load": null, "x": 1}\n', b"[" * 5000):
        assert parsed(raw).bad_result, raw[:40]
    assert parsed(b'{"load": null}\n' + b" " * 990 + b"\n").bad_result  # reached the cap: maybe cut


def test_a_bad_row_fails_alone_zero_or_nan():
    forge = ("import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'I [0]\\n')\n    except OSError:\n"
             "        pass\ndef f():\n    return 1")
    honest = "def f():\n    return 1"
    s = samples([forge, honest, honest], [{"tests": ["assert f() == 1"]}, {"tests": ["assert f() == 1"]}, {}])
    out = CodeExecution(cpu_time=1, wall_time=3, missing="nan")(s)
    assert_close(out.rewards, [0, 1, nan])  # the honest row keeps 1; the row without tests does not apply
    assert_close(out.metrics["bad_result"], [1, 0, 0])
    out = CodeExecution(cpu_time=1, wall_time=3, missing="nan", on_error="nan")(s)
    assert math.isnan(out.rewards[0]) and out.rewards[1] == 1


def test_mbpp_style_tests_of_an_honest_program_pass():
    program = ("def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b)))\n"
               "def is_not_prime(n):\n    return any(n % k == 0 for k in range(2, int(n ** 0.5) + 1))\n"
               "import math\ndef root(x):\n    return math.sqrt(x)")
    tests = ["assert similar_elements((3, 4, 5, 6), (5, 7, 4, 10)) == (4, 5)", "assert is_not_prime(2) == False",
             "assert is_not_prime(10) == True", "assert set(similar_elements((1, 2), (2, 1))) == {1, 2}",
             "import math\nassert math.isclose(root(2), 1.41421356, rel_tol=1e-6)", "assert root(-1) == 0"]
    out = CodeExecution(cpu_time=1, wall_time=3)(samples([program], [{"tests": tests}]))
    assert_close(out.rewards, [5 / 6])  # math.sqrt(-1) raises ValueError: only the last test fails
