"""Sandboxed code execution. Limits are small (1 s CPU, 3 s wall) so each test stays fast."""
import signal

import pytest
from rm_helpers import assert_close, nan, samples

from reward_models.code import CodeExecution, extract_code, normalize_output, parse_tests
from reward_models.sandbox import ISOLATION_FEATURES, SandboxLimits, run_sandboxed

FAST = SandboxLimits(cpu_time=1, wall_time=3, memory_mb=256, max_output_bytes=10_000)


def fenced(code: str) -> str:
    return f"Here is my solution:\n```python\n{code}\n```\nDone."


def test_extract_code():
    assert extract_code(fenced("x = 1")) == "x = 1"
    two = "```\nold\n```\n```python\nnew\n```"
    assert extract_code(two) == "new"  # a python-tagged block wins, the last one
    assert extract_code("```js\nx\n```") == ""  # another language: no program
    assert extract_code("print(1)") == "print(1)"  # auto: unfenced text is the program
    assert extract_code("print(1)", "fenced") == ""
    assert extract_code("") == ""


def test_parse_tests_and_output_normalisation():
    assert parse_tests("assert f()", 0, "tests") == ("assert", ["assert f()"])
    assert parse_tests({"inputs": ["1"], "outputs": ["2"]}, 0, "t") == ("io", [("1", "2")])
    with pytest.raises(ValueError, match="row 3 'tests'"):
        parse_tests(5, 3, "tests")
    assert normalize_output("1 \n2\n\n") == normalize_output("1\n2")


def test_assert_tests_fraction_and_all():
    code = fenced("def add(a, b):\n    return a + b")
    tests = ["assert add(1, 2) == 3", "assert add(0, 0) == 1", "assert add(-1, 1) == 0"]
    s = samples([code, "no code here ```js\nx\n```", ""], [{"tests": tests}] * 3)
    out = CodeExecution(cpu_time=1, wall_time=3)(s)
    # 2 of 3 asserts pass -> 2/3; no python program -> 0; empty completion -> 0
    assert_close(out.rewards, [2 / 3, 0, 0])
    assert_close(out.metrics["no_code"], [0, 1, 1])
    assert_close(CodeExecution(mode="all")(s.select([0])).rewards, [0])


def test_io_tests_and_missing():
    prog = fenced("a, b = map(int, input().split())\nprint(a * b)")
    tests = [{"input": "2 3\n", "output": "6\n"}, {"input": "4 5", "output": "20"}, {"input": "1 1", "output": "2"}]
    s = samples([prog, prog], [{"tests": tests}, {}])
    # products 6 and 20 match, 1 != 2 -> 2/3; the row without tests does not apply
    assert_close(CodeExecution(missing="nan")(s).rewards, [2 / 3, nan])
    with pytest.raises(Exception, match="row 1 has no 'tests'"):
        CodeExecution()(s)


def test_infinite_loop_is_stopped_by_cpu_limit():
    # a 10 s wall clock: on a loaded machine 1 CPU second can take several wall seconds
    res = run_sandboxed("while True:\n    pass", ["1"], limits=SandboxLimits(cpu_time=1, wall_time=10, memory_mb=256))
    assert res.timed_out and res.calls == [(False, "no result")] and res.bad_result is None
    assert res.returncode == -signal.SIGXCPU  # RLIMIT_CPU (1 s) ended it, not the wall clock


def test_sleep_is_stopped_by_wall_limit():
    res = run_sandboxed("import time\ntime.sleep(30)", ["1"], limits=SandboxLimits(cpu_time=1, wall_time=1))
    # the namespace's init kills it at 1 s and says so in its report (the host's backstop: 2 * 1 + 10 s)
    assert res.timed_out and res.returncode == -signal.SIGKILL and res.isolation["pid_namespace"]
    assert res.bad_result is None  # init's report came: it was init, not the host's backstop (12 s), that killed it


def test_memory_bomb_is_contained():
    res = run_sandboxed("x = []\nwhile True:\n    x.append(bytearray(10**7))", ["1"],
                        limits=SandboxLimits(cpu_time=1, wall_time=10, memory_mb=256))
    assert res.load_error == "MemoryError" and res.calls == [(False, "no result")]


def test_fork_loop_is_contained():
    res = run_sandboxed("import os\nwhile True:\n    os.fork()", [], limits=FAST)
    assert res.isolation["no_fork"], "seccomp must hold where isolation is promised"
    assert res.load_error == "PermissionError" and not res.timed_out
    res = run_sandboxed("import subprocess\nsubprocess.run(['true'])", [], limits=FAST)
    assert res.load_error == "PermissionError"
    # threads are still allowed
    res = run_sandboxed("import threading\nt = threading.Thread(target=print)\nt.start()\nt.join()", ["t.is_alive()"],
                        limits=FAST)
    assert res.load_error is None and res.calls == [(True, False)]


def test_huge_output_is_capped():
    res = run_sandboxed("import sys\nwhile True:\n    sys.stdout.write('x' * 4096)", None, limits=FAST)
    assert len(res.stdout) <= FAST.max_output_bytes and not res.timed_out  # RLIMIT_FSIZE stops the writes


def test_network_call_fails():
    prog = "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)"
    res = run_sandboxed(prog, [], limits=FAST)
    assert res.isolation["network"]
    # even loopback is gone: a new network namespace has only a down 'lo'
    assert res.load_error == "OSError"


def test_filesystem_outside_cwd_is_read_only_and_env_minimal(tmp_path):
    target = tmp_path / "pwned"
    prog = "import os\nopen('scratch.txt', 'w').write('ok')\nENV = dict(os.environ)\nCWD = os.getcwd()"
    res = run_sandboxed(prog + f"\nopen({str(target)!r}, 'w').write('x')", [], limits=FAST)
    assert res.isolation["filesystem"]
    # the host's tmp_path is not in the jail at all: the open fails before any write could
    assert res.load_error in ("FileNotFoundError", "OSError", "PermissionError") and not target.exists()
    res = run_sandboxed(prog, ["open('scratch.txt').read()", "sorted(k for k in ENV if k.startswith(('AWS', 'HF_')))",
                               "sorted(os.listdir('.'))", "CWD", "'HOME' in ENV"], limits=FAST)
    assert res.calls == [(True, "ok"), (True, []), (True, ["scratch.txt"]), (True, "/sandbox"), (True, True)]


def test_forged_sys_exit_fails_tests():
    res = run_sandboxed("import sys\nsys.exit(0)", ["1"], limits=FAST)
    assert res.calls == [(False, "no result")] and res.load_error == "SystemExit"


def test_isolation_is_reported_for_every_feature():
    res = run_sandboxed("x = 1", ["x"], limits=FAST)
    assert res.calls == [(True, 1)] and set(res.isolation) == set(ISOLATION_FEATURES)
    # CI runs on a Linux machine whose kernel allows all of them: a sandbox that silently lost one fails here
    assert all(res.isolation.values()), res.isolation


def test_code_reward_reports_timeouts():
    s = samples(
        [fenced("def f():\n    return 1"), fenced("while True:\n    pass")], [{"tests": ["assert f() == 1"]}] * 2
    )
    out = CodeExecution(cpu_time=1, wall_time=3)(s)
    # the looping program never finishes loading: 0 of 1 test; RLIMIT_CPU marks it a timeout
    assert_close(out.rewards, [1, 0])
    assert_close(out.metrics["timeout"], [0, 1])
