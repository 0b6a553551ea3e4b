"""Run untrusted Python in a limited subprocess. What this boundary does and does not stop: docs/rewards.md.

One call = one fresh ``python -I`` process tree (``_sandbox_boot.py``) with a minimal environment, its
own temporary working directory, rlimits (CPU time, address space, file size = output cap, no core
files), a wall-clock timeout that kills it, and — where the kernel allows — new user + pid + network
+ mount namespaces (the program is pid 1 of its own namespace, sees only itself in ``/proc``, runs as
an unprivileged uid with no capabilities, has no network, every mount read-only, a 16 MiB tmpfs as
cwd) and a seccomp filter (no namespace/mount/ptrace syscalls; no process creation when
``max_processes <= 1``). Test results are HMAC-signed with a per-run key the harness reads from a
pipe, so lines the program forges on the report descriptor are ignored. The result says which
isolation features held (``isolation``, keys :data:`ISOLATION_FEATURES`).
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BOOT = str(Path(__file__).with_name("_sandbox_boot.py"))
#: Every isolation feature the boot reports (``no_fork`` only matters with ``max_processes <= 1``).
ISOLATION_FEATURES = ("user_namespace", "pid_namespace", "network", "filesystem", "unprivileged", "syscall_filter",
                      "no_fork")


@dataclass
class SandboxLimits:
    """Limits of one sandboxed run."""

    cpu_time: float = 2.0  #: CPU seconds (RLIMIT_CPU, rounded up to whole seconds)
    wall_time: float = 5.0  #: wall-clock seconds before the process group is killed
    memory_mb: int = 512  #: address-space limit (RLIMIT_AS)
    max_processes: int = 1  #: 1 = no child processes (seccomp); >1 = RLIMIT_NPROC on the sandbox's own uid
    max_output_bytes: int = 1 << 16  #: stdout/stderr and any written file (RLIMIT_FSIZE)
    network: bool = False  #: allow network (False = a fresh, empty network namespace)


@dataclass
class SandboxResult:
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    wall_s: float
    tests: list[bool] = field(default_factory=list)  #: per-test pass flags (assert mode)
    load_error: str | None = None  #: exception type raised while loading the program (assert mode)
    isolation: dict[str, bool] = field(default_factory=dict)  #: which ISOLATION_FEATURES held


def _minimal_env(workdir: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}


def _user_task_count() -> int:
    """Tasks (threads count) owned by this uid: RLIMIT_NPROC counts them all."""
    uid, count = os.getuid(), 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                continue
    return count


def _signed_lines(text: str, key: bytes) -> list[list[str]]:
    """The report lines whose trailing HMAC matches ``key`` (split into words, signature removed)."""
    lines = []
    for line in text.splitlines():
        body, _, sig = line.rpartition(" ")
        want = hmac.new(key, body.encode(), hashlib.sha256).hexdigest()[:32]
        if body and hmac.compare_digest(sig, want):
            lines.append(body.split(" ", 1))
    return lines


def _parse_report(text: str, key: bytes, result: SandboxResult, n_tests: int) -> None:
    """Fill isolation, per-test flags and load error from the signed lines (first line of each wins)."""
    passed: list[bool | None] = [None] * n_tests
    for kind, *rest in _signed_lines(text, key):
        arg = rest[0] if rest else ""
        if kind == "I" and not result.isolation:
            result.isolation = {k: bool(v) for k, v in json.loads(arg).items()}
        elif kind == "T" and arg.count(" ") == 1 and arg.split()[0].isdigit() and int(arg.split()[0]) < n_tests:
            index, ok = arg.split()
            passed[int(index)] = ok == "1" if passed[int(index)] is None else passed[int(index)]
        elif kind == "E" and result.load_error is None:
            result.load_error = arg or "error"
    result.tests = [bool(p) for p in passed]


def _read_capped(path: Path, cap: int) -> str:
    with open(path, "rb") as f:
        return f.read(cap).decode("utf-8", errors="replace")


def run_sandboxed(
    program: str,
    tests: list[str] | None = None,
    stdin: str = "",
    limits: SandboxLimits | None = None,
    python: str | None = None,
) -> SandboxResult:
    """Run ``program``: as ``__main__`` reading ``stdin`` (``tests=None``), or load it as module
    ``solution`` and exec each test string in its namespace (a test passes if it raises nothing)."""
    limits = limits or SandboxLimits()
    root = Path(tempfile.mkdtemp(prefix="trepo-sandbox-"))
    try:
        workdir, io_dir = root / "work", root / "io"
        workdir.mkdir()
        io_dir.mkdir()
        (io_dir / "program.py").write_text(program)
        (io_dir / "tests.json").write_text(json.dumps(tests))
        (io_dir / "stdin.txt").write_text(stdin)
        cfg = {"program_path": str(io_dir / "program.py"), "tests_path": str(io_dir / "tests.json"),
               "workdir": str(workdir), "cpu_time": limits.cpu_time, "memory_mb": limits.memory_mb,
               "max_output_bytes": limits.max_output_bytes, "max_processes": limits.max_processes,
               "network": limits.network, "nproc_base": _user_task_count() if limits.max_processes > 1 else 0}
        return _spawn(cfg, io_dir, limits, python or sys.executable, len(tests or []))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _key_pipe() -> tuple[bytes, int]:
    """A fresh result key and the read end of a pipe holding it (the boot reads it, then closes it)."""
    key = secrets.token_bytes(32)
    read_fd, write_fd = os.pipe()
    os.write(write_fd, key)
    os.close(write_fd)
    return key, read_fd


def _spawn(cfg: dict, io_dir: Path, limits: SandboxLimits, python: str, n_tests: int) -> SandboxResult:
    key, key_fd = _key_pipe()
    with open(io_dir / "stdin.txt", "rb") as fin, open(io_dir / "stdout", "wb") as fout, \
            open(io_dir / "stderr", "wb") as ferr, open(io_dir / "report", "wb+") as frep:
        cfg = {**cfg, "report_fd": frep.fileno(), "key_fd": key_fd}
        start = time.perf_counter()
        try:
            proc = subprocess.Popen(
                [python, "-I", BOOT, json.dumps(cfg)], stdin=fin, stdout=fout, stderr=ferr, cwd=cfg["workdir"],
                env=_minimal_env(cfg["workdir"]), start_new_session=True, pass_fds=(frep.fileno(), key_fd),
            )
        finally:
            os.close(key_fd)
        timed_out = False
        try:
            proc.wait(timeout=limits.wall_time)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc)
        wall = time.perf_counter() - start
    rc = proc.returncode
    # RLIMIT_CPU ends in SIGXCPU/SIGKILL: count it as a timeout too
    timed_out = timed_out or rc in (-signal.SIGXCPU, -signal.SIGKILL)
    result = SandboxResult(rc, _read_capped(io_dir / "stdout", limits.max_output_bytes),
                           _read_capped(io_dir / "stderr", limits.max_output_bytes), timed_out, wall)
    _parse_report((io_dir / "report").read_text(errors="replace"), key, result, n_tests)
    return result


@functools.cache
def probe_isolation(python: str | None = None, max_processes: int = 1) -> tuple[tuple[str, bool], ...]:
    """The isolation features a trivial sandboxed run gets on this machine (cached per interpreter)."""
    res = run_sandboxed("pass", [], limits=SandboxLimits(max_processes=max_processes), python=python)
    return tuple(sorted(res.isolation.items()))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
