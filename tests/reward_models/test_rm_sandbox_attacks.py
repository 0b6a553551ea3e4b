"""The sandbox, attacked. Every test FAILS (never skips) when an isolation feature is missing: CI runs on
a Linux machine whose kernel allows user, pid, network and mount namespaces and seccomp."""
import logging
import os
import subprocess
import threading
import urllib.request

import pytest
from rm_helpers import assert_close, samples

from reward_models.code import CodeExecution
from reward_models.remote import RemoteReward, RewardServer
from reward_models.sandbox import ISOLATION_FEATURES, SandboxLimits, run_sandboxed

FAST = SandboxLimits(cpu_time=1, wall_time=3, memory_mb=256, max_output_bytes=10_000)
SECRET = "trepo-test-secret-4f1c"


def run(program: str, tests=None):
    res = run_sandboxed(program, tests, limits=FAST)
    assert all(res.isolation.get(k) for k in ISOLATION_FEATURES), f"isolation promised, got {res.isolation}"
    return res


@pytest.fixture
def bystander():
    """An unrelated host process the sandboxed program will try to kill."""
    proc = subprocess.Popen(["sleep", "30"])
    yield proc
    proc.kill()
    proc.wait()


def test_cannot_signal_parent_or_host_processes(bystander):
    prog = (f"import os, signal\nout = []\nfor pid in (os.getppid(), {os.getpid()}, {bystander.pid}, -1):\n"
            "    try:\n        os.kill(pid, signal.SIGKILL)\n        out.append('sent')\n"
            "    except OSError as e:\n        out.append(type(e).__name__)\nprint(os.getpid(), os.getppid(), out)")
    res = run(prog)
    # pid 2 of its own namespace; its parent is that namespace's init (pid 1, another uid: EPERM);
    # the host pids do not exist there; kill(-1) finds no other process it may signal
    assert res.stdout.strip() == "2 1 ['PermissionError', 'ProcessLookupError', 'ProcessLookupError', " \
                                 "'ProcessLookupError']", res.stdout + res.stderr
    assert bystander.poll() is None  # still running
    assert sorted(os.listdir("/proc")) and os.getpid()  # and so are we


def test_sees_only_its_own_processes():
    res = run("import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))")
    assert res.stdout.strip() == "[1, 2]"  # the namespace's init and the program


def test_forged_result_lines_score_zero():
    # write pass-looking lines, old (``T 0 1``) and new (``{"value": true}``) style, to every open
    # descriptor, then leave before the calls run: the results are the program's own and prove nothing
    prog = ("import os\nfor fd in map(int, os.listdir('/proc/self/fd')):\n    try:\n"
            "        os.write(fd, b'T 0 1\\n{\"load\": null}\\n{\"value\": true}\\n')\n"
            "    except OSError:\n        pass\nos._exit(0)")
    res = run_sandboxed(prog, ["f()"], limits=FAST)
    # 'T 0 1' is no result line and there is one line too many: the row's results are unusable
    assert res.bad_result and res.calls == [(False, "no result")]
    assert all(res.isolation.values()), res.isolation  # init's report is out of the program's reach
    honest = "def f():\n    return 2"
    out = CodeExecution(cpu_time=1, wall_time=3)(samples([prog, honest], [{"tests": ["assert f() == 1 + 1"]}] * 2))
    assert_close(out.rewards, [0.0, 1.0])  # the forged row fails alone; the honest row keeps its score
    assert_close(out.metrics["bad_result"], [1.0, 0.0])


def test_cannot_read_host_secrets(monkeypatch):
    monkeypatch.setenv("TREPO_SANDBOX_SECRET", SECRET)
    prog = (f"import os\nfound = [SECRET for SECRET in os.environ.values() if '{SECRET[:10]}' in SECRET]\n"
            "for path in [f'/proc/{p}/environ' for p in os.listdir('/proc') if p.isdigit()] + "
            f"['/proc/{os.getpid()}/environ', '/root/.bash_history']:\n"
            "    try:\n        found.append(open(path, 'rb').read().decode(errors='replace'))\n"
            "    except OSError:\n        pass\nprint(found)")
    res = run(prog)
    assert SECRET not in res.stdout and res.returncode == 0
    assert os.environ["TREPO_SANDBOX_SECRET"] == SECRET  # the variable was there to steal


def test_cannot_write_outside_its_directory(tmp_path):
    prog = ("import os\nout = []\nfor path in [{!r}, '/tmp/trepo-pwned', os.path.expanduser('~/../x')]:\n"
            "    try:\n        open(path, 'w').write('x')\n        out.append('wrote')\n"
            "    except OSError as e:\n        out.append(e.errno)\nopen('ok.txt', 'w').write('fine')\nprint(out)")
    res = run(prog.format(str(tmp_path / "pwned")))
    assert "wrote" not in res.stdout and res.returncode == 0  # its own cwd stays writable
    assert not (tmp_path / "pwned").exists() and not os.path.exists("/tmp/trepo-pwned")


def test_runs_unprivileged_without_capabilities():
    res = run("import os\nst = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
              "print(os.getuid(), st['CapEff'].strip(), st['CapBnd'].strip())")
    uid, eff, bnd = res.stdout.split()
    assert int(eff, 16) == 0 and int(bnd, 16) == 0 and (uid != "0" or os.getuid() != 0)


def test_ctypes_tricks_are_refused():
    # fork(57), unshare(272, CLONE_NEWUSER), mount(165) on x86_64; via libc on any machine
    prog = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "print(libc.fork(), libc.unshare(0x10000000), libc.mount(b'none', b'/', None, 0x20, None), "
            "libc.setuid(0), libc.kill(0, 0) if False else 0)")
    res = run(prog)
    assert res.stdout.split()[:4] == ["-1", "-1", "-1", "-1"], res.stdout + res.stderr


def test_subprocess_and_exec_are_refused():
    res = run("import subprocess\nsubprocess.run(['sh', '-c', 'kill -9 -1'])", ["1"])
    assert res.load_error == "PermissionError" and res.calls == [(False, "no result")]


def test_hostile_completion_leaves_the_reward_server_up(bystander, caplog):
    tree = CodeExecution(cpu_time=1, wall_time=3)
    server = RewardServer(tree, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hostile = [f"import os\nos.kill(os.getppid(), 9)\nos.kill({os.getpid()}, 9)\nos.kill({bystander.pid}, 9)",
               "import os\nos.write(3, b'T 0 1\\n')\nos._exit(0)", "while True:\n    pass",
               "def f():\n    return 1"]
    try:
        with caplog.at_level(logging.ERROR, "reward_models"):
            out = RemoteReward(server.url, retries=0)(samples(hostile, [{"tests": ["assert f() == 1"]}] * 4))
        # the first three never define f: 0; the honest one passes
        assert_close(out.rewards, [0, 0, 0, 1])
        with urllib.request.urlopen(f"{server.url}/health", timeout=5) as r:
            assert r.status == 200
        assert bystander.poll() is None
    finally:
        server.shutdown()
        server.server_close()


def test_missing_isolation_refuses_unless_opted_out(monkeypatch, caplog):
    import reward_models.code as code

    lacking = tuple((k, k != "pid_namespace") for k in ISOLATION_FEATURES)
    monkeypatch.setattr(code, "probe_isolation", lambda python, max_processes: lacking)
    s = samples(["def f():\n    return 1"], [{"tests": ["assert f() == 1"]}])
    with pytest.raises(Exception, match=r"lacks \['pid_namespace'\].*allow_unisolated"):
        CodeExecution(cpu_time=1, wall_time=3)(s)
    with caplog.at_level(logging.WARNING, "reward_models"):
        assert_close(CodeExecution(cpu_time=1, wall_time=3, allow_unisolated=True)(s).rewards, [1.0])
    assert "WITHOUT ['pid_namespace']" in caplog.text


def test_max_processes_counts_only_the_sandbox():
    # RLIMIT_NPROC = 4 for uid nobody in its own user namespace: the program itself plus 3 children
    prog = ("import os, time\nkids = 0\ntry:\n    for _ in range(50):\n        if os.fork() == 0:\n"
            "            time.sleep(2)\n            os._exit(0)\n        kids += 1\nexcept OSError as e:\n"
            "    print('stopped', kids, type(e).__name__)")
    res = run_sandboxed(prog, None, limits=SandboxLimits(cpu_time=1, wall_time=3, max_processes=4))
    assert res.isolation["unprivileged"] and res.isolation["pid_namespace"]
    assert res.stdout.strip() == "stopped 3 BlockingIOError"


def test_a_run_that_lost_isolation_is_an_error(monkeypatch):
    import reward_models.code as code

    real = code.run_sandboxed

    def degraded(*args, **kwargs):
        res = real(*args, **kwargs)
        res.isolation["network"] = False  # as if this one run had come up without its namespace
        return res

    reward = CodeExecution(cpu_time=1, wall_time=3)
    monkeypatch.setattr(code, "run_sandboxed", degraded)
    with pytest.raises(Exception, match=r"lost isolation \['network'\]"):
        reward(samples(["def f():\n    return 1"], [{"tests": ["assert f() == 1"]}]))


@pytest.mark.slow  # a subprocess: a fresh interpreter imports lightning and transformers (seconds of startup)
def test_hostile_completions_leave_the_serve_reward_process_up(monkeypatch):
    """The reported attack: one HTTP request to ``serve-reward`` with configs/rewards/code.yaml, whose
    completion kills its parent (the server, by ppid and by pid), forges pass lines, loops."""
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    monkeypatch.setenv("TREPO_REWARD_TOKEN", "tok-123")  # the server and RemoteReward share it
    proc = subprocess.Popen([sys.executable, "-m", "reward_models.cli", "serve-reward", "--config",
                             str(root / "configs/rewards/code.yaml"), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=root)
    try:
        line = proc.stdout.readline()
        assert "bearer token required" in line, line + proc.stderr.read()
        url = line.split(" on ")[1].split()[0]
        fence = "```python\n{}\n```"
        hostile = [fence.format(f"import os\nos.kill(os.getppid(), 9)\nos.kill({proc.pid}, 9)"),
                   fence.format("import os\nfor fd in range(3, 20):\n    try:\n        os.write(fd, b'T 0 1\\n')\n"
                                "    except OSError:\n        pass\nos._exit(0)"),
                   fence.format("import os\nfor fd in range(3, 20):\n    try:\n        os.write(fd, b'I [0]\\n')\n"
                                "    except OSError:\n        pass\ndef f():\n    return 1"),
                   fence.format("def f():\n    return 1")]
        out = RemoteReward(url, retries=0, timeout=30)(samples(hostile, [{"tests": ["assert f() == 2 - 1"]}] * 4))
        # total = tests + 0.1 * fenced: every completion is fenced; only the honest one passes its test; the
        # row that wrote a malformed result line fails alone (no HTTP 500, the honest row keeps its score)
        assert_close(out.rewards, [0.1, 0.1, 0.1, 1.1])
        with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
            assert r.status == 200 and proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_detached_grandchildren_die_with_the_run():
    # with processes allowed: a grandchild in its own session, sleeping 30 s, must not outlive the run
    prog = ("import os, time\nprint(os.readlink('/proc/self/ns/pid'), flush=True)\nif os.fork() == 0:\n"
            "    os.setsid()\n    if os.fork() == 0:\n        time.sleep(30)\n    os._exit(0)\ntime.sleep(0.2)")
    res = run_sandboxed(prog, None, limits=SandboxLimits(cpu_time=1, wall_time=3, max_processes=4))
    ns = res.stdout.split()[0]
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            left += [pid] if os.readlink(f"/proc/{pid}/ns/pid") == ns else []
        except OSError:
            continue
    assert ns.startswith("pid:[") and res.returncode == 0 and left == [], (res, left)
