"""Run untrusted Python in a limited subprocess. What this boundary does and does not stop: docs/rewards.md.

One call = one fresh ``python -I`` process (``_sandbox_boot.py``) with a minimal environment, its own
temporary working directory, rlimits (CPU time, address space, file size = output cap, no core
files), a wall-clock timeout that kills the process group, and — where the kernel allows — new
user + network + mount namespaces (no network; every mount read-only; a 16 MiB tmpfs as cwd) and a
seccomp filter that forbids creating processes (``max_processes <= 1``). The result says which of
those held (``isolation``).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BOOT = str(Path(__file__).with_name("_sandbox_boot.py"))


@dataclass
class SandboxLimits:
    """Limits of one sandboxed run."""

    cpu_time: float = 2.0  #: CPU seconds (RLIMIT_CPU, rounded up to whole seconds)
    wall_time: float = 5.0  #: wall-clock seconds before the process group is killed
    memory_mb: int = 512  #: address-space limit (RLIMIT_AS)
    max_processes: int = 1  #: 1 = no child processes (seccomp); >1 = RLIMIT_NPROC (non-root only)
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
    isolation: dict[str, bool] = field(default_factory=dict)  #: network / filesystem / no_fork held


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


def _parse_report(text: str, result: SandboxResult, n_tests: int) -> None:
    passed = [False] * n_tests
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] == ["I"] and len(parts) == 4 and not result.isolation:
            result.isolation = {"network": parts[1] == "1", "filesystem": parts[2] == "1", "no_fork": parts[3] == "1"}
        elif parts[:1] == ["T"] and len(parts) == 3 and parts[1].isdigit() and int(parts[1]) < n_tests:
            passed[int(parts[1])] = parts[2] == "1"
        elif parts[:1] == ["E"] and result.load_error is None:
            result.load_error = " ".join(parts[1:]) or "error"
    result.tests = passed


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


def _spawn(cfg: dict, io_dir: Path, limits: SandboxLimits, python: str, n_tests: int) -> SandboxResult:
    with open(io_dir / "stdin.txt", "rb") as fin, open(io_dir / "stdout", "wb") as fout, \
            open(io_dir / "stderr", "wb") as ferr, open(io_dir / "report", "wb+") as frep:
        cfg = {**cfg, "report_fd": frep.fileno()}
        start = time.perf_counter()
        proc = subprocess.Popen(
            [python, "-I", BOOT, json.dumps(cfg)], stdin=fin, stdout=fout, stderr=ferr, cwd=cfg["workdir"],
            env=_minimal_env(cfg["workdir"]), start_new_session=True, pass_fds=(frep.fileno(),),
        )
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
    _parse_report((io_dir / "report").read_text(errors="replace"), result, n_tests)
    return result


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
