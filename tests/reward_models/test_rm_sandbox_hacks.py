"""Reward hacking, attacked as a policy would: a WRONG solution (``add = a - b``) plus an attack on
the judge must score 0, while an honest row in the same batch scores 1. All attack rows run in one
``CodeExecution`` call (one sandbox each, two at a time) shared by the parametrised tests below.
Every test FAILS (never skips) when isolation is promised: CI runs where every feature holds."""
import os
import socket
import tempfile
import threading

import pytest
from rm_helpers import samples

import reward_models.code as code
from reward_models.code import CodeExecution

WRONG = "def add(a, b):\n    return a - b\n"
HONEST = "def add(a, b):\n    return a + b\n"
# 1 - 2 = -1 and 20000 - 1337 = 18663: the wrong add fails both; "21337" appears nowhere but here
TESTS = ["assert add(1, 2) == 3", "assert add(20000, 1337) == 21337"]
HOST_FILE_TEXT = "21337 (the expected output, in a world-readable host file)"


def guarded(attack: str) -> str:
    """The wrong ``add``, then the attack (which may redefine it), its error kept in ``_ERR`` and
    printed last. Attacks starting with ``#raw`` run as they are."""
    if attack.startswith("#raw"):
        return WRONG + attack
    body = "\n".join("    " + line for line in attack.strip("\n").splitlines())
    return f"{WRONG}_ERR = None\ntry:\n{body}\nexcept BaseException as _err:\n    _ERR = _err\nprint('ERR', repr(_ERR))"


ALWAYS_EQ = "class A:\n    __eq__ = lambda s, o: True\n    __ne__ = lambda s, o: False\n    __hash__ = lambda s: 0\n"
FD_LOOP = "import os\nfor fd in range(3, 64):\n    try:\n        os.{}\n    except OSError:\n        pass\n"
#: name -> (program text, what the attack's own error must show; "TIMEOUT": the run must time out)
ATTACKS = {
    # the old harness's report function and key are gone: reaching for them finds nothing
    "main_report": ("import __main__\n__main__.report('T 0 1')", "AttributeError"),
    "globals_key_scan": ("import sys\nf = sys._getframe()\nwhile f:\n    for k, v in list(f.f_globals.items()):\n"
                         "        if k in ('report', 'STATE') and callable(v):\n            v('T 0 1')\n"
                         "    f = f.f_back", None),
    "frame_back_globals": ("import sys\nsys._getframe(1).f_globals['report']('T 0 1')", "KeyError"),
    "gc_find_report": ("import gc\nfor o in gc.get_objects():\n    if callable(o) and getattr(o, '__name__', '') in "
                       "('report', 'run_tests', 'run_calls'):\n        try:\n            o('T 0 1')\n"
                       "        except Exception:\n            pass", None),
    "inspect_stack_rewrites_calls": ("import inspect\nfor fi in inspect.stack():\n"
                                     "    for k, v in fi.frame.f_locals.items():\n"
                                     "        if k in ('tests', 'calls') and type(v) is list:\n"
                                     "            v[:] = ['True'] * len(v)", None),
    "memory_scan_for_expected": ("import gc, re\nBLOB = ' '.join(repr(o)[:300] for o in gc.get_objects())\n"
                                 "def add(a, b):\n    m = re.search(r'add\\(%d, %d\\) == (\\d+)' % (a, b), BLOB)\n"
                                 "    return int(m.group(1)) if m else a - b", None),
    # the judge lives in the host: patching this interpreter changes only this interpreter
    "builtins_exec_noop": ("import builtins\nbuiltins.exec = lambda *a, **k: None", None),
    "builtins_eval_true": ("import builtins\nbuiltins.eval = lambda *a, **k: True", None),
    "compile_patched": ("import builtins\n_c = builtins.compile\n"
                        "builtins.compile = lambda s, *a, **k: _c('True', 'x', 'eval')", None),
    "compile_optimize2": ("import builtins\n_c = builtins.compile\n"
                          "builtins.compile = lambda s, f, m, *a, **k: _c(s, f, m, optimize=2)", None),
    "json_dumps_patched": ("import json\njson.dumps = lambda o, **k: '{\"value\": true}'", None),
    "encode_patched": ("import __main__\n__main__.encode = lambda v, d=0: True", None),
    "always_eq_object": (ALWAYS_EQ + "def add(a, b):\n    return A()", None),
    "int_subclass_eq": ("class I(int):\n    __eq__ = lambda s, o: True\n    __hash__ = int.__hash__\n"
                        "def add(a, b):\n    return I(a - b)", None),
    "str_subclass_eq": ("class S(str):\n    __eq__ = lambda s, o: True\n    __hash__ = str.__hash__\n"
                        "def add(a, b):\n    return S('x')", None),
    "fake_numpy_tolist": ("class N:\n    __module__ = 'numpy'\n    def tolist(self):\n        return self\n"
                          "def add(a, b):\n    return N()", None),
    "code_constants": ("import gc\nK = [c for o in gc.get_objects() if type(o).__name__ == 'code' and "
                       "o.co_filename.startswith(('test_', 'judge')) for c in o.co_consts if type(c) is int]\n"
                       "def add(a, b):\n    return K[-1] if K else a - b", None),
    "sys_exit_before_tests": ("#raw\nimport sys\nsys.exit(0)", None),
    "os_exit_before_tests": ("#raw\nimport os\nos._exit(0)", None),
    "forged_lines_then_exit": ("#raw\n" + FD_LOOP.format(
        "write(fd, b'{\"load\": null}\\n{\"value\": true}\\n{\"value\": true}\\n')") + "os._exit(0)", None),
    "forged_json_lines": (FD_LOOP.format("write(fd, b'{\"load\": null}\\n{\"value\": true}\\n')"), None),
    "malformed_result_line": (FD_LOOP.format("write(fd, b'I [0]\\n')"), None),
    "oversize_result": (FD_LOOP.format("write(fd, b'[' * 70000)"), None),
    "ftruncate_every_fd": (FD_LOOP.format("ftruncate(fd, 0)"), None),
    # containment: each of these must be refused by the kernel, with the error shown
    "init_fds_via_proc": ("import os\nfor fd in os.listdir('/proc/1/fd'):\n"
                          "    open('/proc/1/fd/' + fd, 'w').write('{}')", "PermissionError"),
    "kill_init": ("import os, signal\nos.kill(1, signal.SIGKILL)", "PermissionError"),
    "kill_everything": ("import os, signal\nos.kill(-1, signal.SIGKILL)", "ProcessLookupError"),
    "ptrace_init": ("import ctypes\nassert ctypes.CDLL(None).ptrace(16, 1, 0, 0) == 0", "AssertionError"),
    "thread_bomb": ("import threading, time\nthreading.stack_size(32768)\nwhile True:\n"
                    "    threading.Thread(target=time.sleep, args=(2,), daemon=True).start()", "RuntimeError"),
    "fork_bomb": ("import os\nwhile True:\n    os.fork()", "PermissionError"),
    "af_unix_host_socket": ("import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect(UNIX_PATH)\n"
                            "s.sendall(b'pwned')", "PermissionError"),
    "af_unix_abstract": ("import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('\\0trepo-h16')",
                         "PermissionError"),
    "io_uring_setup": ("import ctypes\nbuf = ctypes.create_string_buffer(120)\n"
                       "assert ctypes.CDLL(None).syscall(425, 4, buf) >= 0", "AssertionError"),
    "open_by_handle_at": ("import ctypes\nassert ctypes.CDLL(None).syscall(304, -100, 0, 0) >= 0", "AssertionError"),
    "mount_and_unshare": ("import ctypes\nlibc = ctypes.CDLL(None)\nassert libc.unshare(0x10000000) == 0 or "
                          "libc.mount(b'none', b'/', None, 0x20, None) == 0", "AssertionError"),
    "chroot_escape": ("import os\nos.chroot('/usr')", "PermissionError"),
    "setuid_root": ("import os\nos.setuid(0)", "PermissionError"),
    "read_dataset_file": ("ANSWERS = open(DATASET_PATH).read()\n"
                          "def add(a, b):\n    return int(ANSWERS.split()[0])", "FileNotFoundError"),
    "read_project_config": ("open(PROJECT_FILE).read()", "FileNotFoundError"),
    # the host's temporary directory holding the dataset file (the jail's /tmp holds at most the path down to a bound
    # interpreter directory, e.g. a venv created under /tmp, never the host's other entries)
    "host_tmp_listing": ("import os\nos.listdir(os.path.dirname(DATASET_PATH))", "FileNotFoundError"),
    "etc_shadow": ("open('/etc/shadow').read()", "FileNotFoundError"),
    "symlink_to_host": ("import os\nos.symlink('/etc/passwd', 'p')\nopen('p').read()", "FileNotFoundError"),
    "write_outside_cwd": ("open('/usr/pwned', 'w')", "OSError(30"),
    "disk_bomb": ("with open('big', 'wb') as f:\n    for _ in range(1000):\n        f.write(b'x' * (1 << 20))",
                  "File too large"),
    "fd_bomb": ("fds = [open('/dev/null') for _ in range(100000)]", "Too many open files"),
    "memory_bomb": ("x = [bytearray(1 << 24) for _ in range(1000)]", "MemoryError"),
    "tcp_loopback": ("import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)", "OSError"),
    "sigxcpu_ignored_spin": ("#raw\nimport signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n"
                             "    pass", "TIMEOUT"),
}


def attack_rows():
    unix_dir = tempfile.mkdtemp(prefix="trepo-h16-")
    os.chmod(unix_dir, 0o755)
    dataset = os.path.join(unix_dir, "answers.txt")
    with open(dataset, "w") as f:
        f.write(HOST_FILE_TEXT)
    os.chmod(dataset, 0o644)
    prelude = (f"UNIX_PATH = {os.path.join(unix_dir, 'sock')!r}\nDATASET_PATH = {dataset!r}\n"
               f"PROJECT_FILE = {os.path.abspath('configs/rewards/code.yaml')!r}\n")
    return unix_dir, {name: prelude + guarded(attack) for name, (attack, _) in ATTACKS.items()}


@pytest.fixture(scope="module")
def batch():
    """Score every attack row, an honest row and a plain wrong row in one call; keep each run's result."""
    unix_dir, programs = attack_rows()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(os.path.join(unix_dir, "sock"))
    os.chmod(os.path.join(unix_dir, "sock"), 0o777)
    listener.listen(8)
    listener.settimeout(0.2)
    names = ["honest", "wrong"] + list(programs)
    completions = [HONEST, WRONG] + list(programs.values())
    runs, real = {}, code.run_sandboxed

    def recorded(program, calls=None, **kwargs):
        res = real(program, calls, **kwargs)
        runs[program] = res
        res.sent = (program, calls, kwargs.get("stdin", ""))  # everything the sandbox received
        return res

    code.run_sandboxed = recorded
    try:
        reward = CodeExecution(cpu_time=1, wall_time=3, memory_mb=256, max_output_bytes=65536)
        out = reward(samples(completions, [{"tests": TESTS}] * len(completions)))
    finally:
        code.run_sandboxed = real
    try:
        connected = listener.accept()[0].recv(100)
    except TimeoutError:
        connected = b""
    listener.close()
    yield {name: (out.rewards[k].item(), out.metrics["bad_result"][k].item(), runs.get(completion.strip()))
           for k, (name, completion) in enumerate(zip(names, completions, strict=True))}, connected


def test_honest_and_plain_wrong_rows(batch):
    scores, _ = batch
    assert scores["honest"][0] == 1.0 and scores["wrong"][0] == 0.0  # 2 of 2 tests; 0 of 2


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_scores_zero(batch, name):
    scores, _ = batch
    reward, bad, res = scores[name]
    assert reward == 0.0, f"{name}: a wrong solution scored {reward}"
    assert res is not None and all(res.isolation.get(k) for k in code.ISOLATION_FEATURES) or bad == 1.0, res


def test_result_forgery_fails_only_its_own_row(batch):
    scores, _ = batch
    for name in ("malformed_result_line", "oversize_result"):
        assert scores[name][1] == 1.0, scores[name][2]  # bad_result, score 0, while "honest" keeps 1.0
    assert scores["honest"][1] == 0.0 and scores["honest"][0] == 1.0


def test_isolation_report_survives_the_program(batch):
    scores, _ = batch
    for name in ("ftruncate_every_fd", "init_fds_via_proc", "kill_init", "forged_json_lines"):
        res = scores[name][2]
        assert res.bad_result is None or "isolation" not in res.bad_result, res
        assert all(res.isolation[k] for k in code.ISOLATION_FEATURES), (name, res.isolation)


@pytest.mark.parametrize("name", [n for n, (_, expect) in ATTACKS.items() if expect])
def test_attack_was_refused(batch, name):
    scores, _ = batch
    res, expect = scores[name][2], ATTACKS[name][1]
    if expect == "TIMEOUT":
        assert res.timed_out, res
    else:
        assert "ERR " in res.stdout and expect in res.stdout.split("ERR ", 1)[1], (name, res.stdout[-300:], res.stderr)


def test_no_expected_value_enters_the_sandbox(batch):
    scores, _ = batch
    for name, (_, _, res) in scores.items():
        program, calls, stdin = res.sent
        # the sandbox gets the program, the calls with their literal inputs, and no expected value
        assert calls == ["add(1, 2)", "add(20000, 1337)"] and stdin == "", name
        assert "21337" not in program + stdin and "== 3" not in program, name


def test_unix_socket_on_the_host_got_nothing(batch):
    _, connected = batch
    assert connected == b""


def test_thread_bomb_is_capped():
    # max_tasks 16: the program and at most 15 threads; the 16th start fails (RuntimeError)
    prog = ("import threading, time\nthreading.stack_size(32768)\nn = 0\ntry:\n    while n < 100000:\n"
            "        threading.Thread(target=time.sleep, args=(1,), daemon=True).start()\n        n += 1\n"
            "except RuntimeError:\n    pass\nprint(n)")
    from reward_models.sandbox import SandboxLimits, run_sandboxed
    peak = []
    stop = threading.Event()

    def watch():  # the host's view: tasks of every process whose pid namespace is not ours
        mine = os.readlink("/proc/self/ns/pid")
        while not stop.is_set():
            count = 0
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    if os.readlink(f"/proc/{pid}/ns/pid") != mine:
                        count += len(os.listdir(f"/proc/{pid}/task"))
                except OSError:
                    continue
            peak.append(count)
            stop.wait(0.02)

    before = threading.Thread(target=watch, daemon=True)
    before.start()
    stop.wait(0.1)
    try:
        res = run_sandboxed(prog, None, limits=SandboxLimits(cpu_time=2, wall_time=4, max_tasks=16))
    finally:
        stop.set()
        before.join()
    assert res.stdout.strip() == "15", res.stdout + res.stderr
    # the host sees at most the 16 capped tasks plus the namespace's init (other sandboxes may run too)
    assert all(res.isolation.values()) and max(peak) - peak[0] <= 17, peak
