"""Reward hacking through the proxy channel: tests that cannot be split (a loop, HumanEval's
``check(candidate)``) run in a judge's sandbox and reach the program only through proxies. A WRONG
``add`` (a - b) plus an attack must score 0 while an honest row in the same batch scores 1. Every
attack of test_rm_sandbox_hacks.py runs again here, on this path, with the attacks on the channel
itself. All rows run in one ``CodeExecution`` call shared by the parametrised tests below."""
import pytest
from rm_helpers import samples
from test_rm_sandbox_hacks import ATTACKS, FD_LOOP, HONEST, WRONG, attack_rows

import reward_models.code as code
import reward_models.sandbox as sandbox
from reward_models.code import CodeExecution

# 1 - 2 = -1 and 20000 - 1337 = 18663: the wrong add fails every test; "21337" appears only in the tests
LOOP = "for a, b, s in [(1, 2, 3), (20000, 1337, 21337)]:\n    assert add(a, b) == s"
CHECK = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(20000, 1337) == 21337\n"
# each passes with an object whose !=, truth, iteration or StopIteration answered for the judge
NE = "assert not (add(1, 2) != 3) and not (add(20000, 1337) != 21337)"
FALSY = "assert [not add(1, 2) or add(1, 2) == 3 for _ in range(2)] == [True, True]"
ZIP = "assert all(x == y for x, y in zip(add([20000], [1337]), [20000, 1337]))"  # the wrong add: TypeError
MAP = "assert all(map(lambda p: add(p[0], p[1]) == p[2], [(1, 2, 3), (20000, 1337, 21337)]))"
TESTS = [LOOP, CHECK, NE, FALSY, ZIP, MAP]
ANYTHING = ("class A:\n    __eq__ = lambda s, o: True\n    __ne__ = lambda s, o: False\n    __hash__ = lambda s: 0\n"
            "    __bool__ = lambda s: False\n    __len__ = lambda s: 0\n    __iter__ = lambda s: iter(())\n"
            "    __getitem__ = lambda s, k: (_ for _ in ()).throw(IndexError)\n    __contains__ = lambda s, x: True\n")
#: name -> (program after the wrong add, what the judge's run must show: "TIMEOUT" or a fast run)
CHANNEL_ATTACKS = {
    "anything_object": (ANYTHING + "def add(a, b):\n    return A()\n", None),
    "stop_iteration": ("def add(a, b):\n    raise StopIteration\n", None),
    "base_exception": ("def add(a, b):\n    raise KeyboardInterrupt\n", None),
    "forged_reply_lines": (FD_LOOP.format("write(fd, b'{\"value\": true}\\n' * 200)"), None),
    "forged_ref_replies": (FD_LOOP.format("write(fd, b'{\"ref\": 0}\\n{\"ref\": \"add\"}\\n' * 100)"), None),
    "malformed_reply": (FD_LOOP.format("write(fd, b'garbage\\n')"), None),
    "oversize_reply": ("def add(a, b):\n    return 'x' * 10 ** 6\n", "fast"),
    "deep_reply": (FD_LOOP.format("write(fd, b'{\"value\": ' + b'[' * 30000 + b']' * 30000 + b'}\\n')"), "fast"),
    "huge_int_reply": (FD_LOOP.format("write(fd, b'{\"value\": ' + b'9' * 60000 + b'}\\n')"), "fast"),
    "never_ending_line": (FD_LOOP.format("write(fd, b'[' * 65536)") + "import time\ntime.sleep(30)\n", "TIMEOUT"),
    "sleep_in_call": ("import time\ndef add(a, b):\n    time.sleep(30)\n", "TIMEOUT"),
    "exit_in_call": ("import os\ndef add(a, b):\n    os._exit(0)\n", "fast"),
    "read_requests_and_answer": ("import os, threading\ndef steal():\n    for fd in range(3, 64):\n        try:\n"
                                 "            os.read(fd, 4096)\n"
                                 "            os.write(fd + 1, b'{\"value\": true}\\n')\n"
                                 "        except OSError:\n            pass\n"
                                 "threading.Thread(target=steal, daemon=True).start()\n", None),
}


@pytest.fixture(scope="module")
def batch():
    """Score every attack row (the hacks and the channel attacks), an honest and a wrong row in one call."""
    _, programs = attack_rows()
    programs = {**programs, **{name: WRONG + attack for name, (attack, _) in CHANNEL_ATTACKS.items()}}
    names = ["honest", "wrong"] + list(programs)
    completions = [HONEST, WRONG] + list(programs.values())
    runs, sent, real_linked, real_sandboxed = {}, {}, code.run_linked, sandbox.run_sandboxed

    def linked(program, tests, spec, limits, python=None):
        runs[program] = real_linked(program, tests, spec, limits, python)
        return runs[program]

    def sandboxed(program, calls=None, **kwargs):  # everything each sandbox of the pair received
        role = (kwargs.get("proxy") or {}).get("role", "plain")
        sent.setdefault(role, []).append((program, calls, kwargs.get("stdin", "")))
        return real_sandboxed(program, calls, **kwargs)

    code.run_linked, sandbox.run_sandboxed = linked, sandboxed
    try:
        reward = CodeExecution(cpu_time=1, wall_time=3, memory_mb=256, max_output_bytes=65536)
        out = reward(samples(completions, [{"tests": TESTS, "entry_point": "add"}] * len(completions)))
    finally:
        code.run_linked, sandbox.run_sandboxed = real_linked, real_sandboxed
    yield {name: (out.rewards[k].item(), out.metrics["bad_result"][k].item(), runs.get(completion.strip()))
           for k, (name, completion) in enumerate(zip(names, completions, strict=True))}, sent


def test_honest_and_plain_wrong_rows(batch):
    scores, _ = batch
    assert scores["honest"][0] == 1.0 and scores["wrong"][0] == 0.0  # 6 of 6 tests; 0 of 6


@pytest.mark.parametrize("name", list(ATTACKS) + list(CHANNEL_ATTACKS))
def test_attack_scores_zero(batch, name):
    scores, _ = batch
    reward, bad, runs = scores[name]
    assert reward == 0.0, f"{name}: a wrong solution scored {reward}"
    assert runs is not None and all(r.isolation.get(k) for r in runs for k in code.ISOLATION_FEATURES) or bad, runs


@pytest.mark.parametrize("name", [n for n, (_, expect) in ATTACKS.items() if expect])
def test_attack_was_refused_in_the_programs_sandbox(batch, name):
    scores, _ = batch
    served, expect = scores[name][2][0], ATTACKS[name][1]
    if expect == "TIMEOUT":
        assert served.timed_out, served
    else:
        assert "ERR " in served.stdout and expect in served.stdout.split("ERR ", 1)[1], (name, served.stdout[-300:])


@pytest.mark.parametrize("name", [n for n, (_, expect) in CHANNEL_ATTACKS.items() if expect])
def test_channel_attack_ends_fast_or_times_out(batch, name):
    scores, _ = batch
    served, judged = scores[name][2]
    if CHANNEL_ATTACKS[name][1] == "TIMEOUT":
        assert served.timed_out or judged.timed_out
    else:  # the judge refused the reply at once and failed the other tests without waiting for the wall clock
        assert not judged.timed_out and judged.wall_s < 2.5 and len(judged.calls) == len(TESTS), judged


def test_no_expected_value_enters_the_programs_sandbox(batch):
    _, sent = batch
    assert len(sent["serve"]) == len(sent["judge"]) == 2 + len(ATTACKS) + len(CHANNEL_ATTACKS)
    for program, calls, stdin in sent["serve"]:
        assert calls == [] and stdin == "" and "21337" not in program and "== 3" not in program
    # the tests (and so the expected values) go to the judge's sandbox only
    for _, tests, _ in sent["judge"]:
        assert tests[:1] == [LOOP] and tests[1].endswith("check(add)\n")
