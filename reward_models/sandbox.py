"""Run untrusted Python in a limited subprocess. What this boundary does and does not stop: docs/rewards.md.

One call = one fresh ``python -I`` process tree (``_sandbox_boot.py``) with a minimal environment,
rlimits (CPU time, address space, file size = output cap, no core files, a task cap that counts
threads), a wall-clock limit, and — where the kernel allows — new user + pid + network + mount
namespaces: the program is pid 2 of its own namespace, runs as an unprivileged uid with no
capabilities under a seccomp filter, has no network, and sees only a jail (an empty tmpfs root with
the interpreter's own paths bound back read-only and a 16 MiB tmpfs as cwd).

The program runs as ``__main__`` on ``stdin`` (its stdout is the answer), or is loaded as module
``solution`` and each *call* expression is evaluated; the values come back as strict JSON of plain
values (:func:`decode_value`). Expected values never enter the sandbox: the caller compares.
:func:`run_linked` joins a program's sandbox to a judge's sandbox that runs tests unchanged,
through proxies (reward_models/_proxy.py). The
isolation report (keys :data:`ISOLATION_FEATURES`) is written by the namespace's init on a pipe the
program never holds; a missing or unparsable report, or malformed results, set ``bad_result``.
"""
from __future__ import annotations

import fcntl
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reward_models._proxy import decode_value

__all__ = ["ISOLATION_FEATURES", "SandboxLimits", "SandboxResult", "decode_value", "probe_isolation", "run_linked",
           "run_sandboxed"]

BOOT = str(Path(__file__).with_name("_sandbox_boot.py"))
PROXY_SOURCE = Path(__file__).with_name("_proxy.py").read_text()
#: Every isolation feature the boot reports (``no_fork`` only matters with ``max_processes <= 1``).
ISOLATION_FEATURES = ("user_namespace", "pid_namespace", "network", "filesystem", "unprivileged", "syscall_filter",
                      "no_fork")


@dataclass
class SandboxLimits:
    """Limits of one sandboxed run."""

    cpu_time: float = 2.0  #: CPU seconds (RLIMIT_CPU, rounded up to whole seconds)
    wall_time: float = 5.0  #: wall-clock seconds before every process of the run is killed
    memory_mb: int = 512  #: address-space limit (RLIMIT_AS)
    max_processes: int = 1  #: 1 = no child processes (seccomp); >1 = RLIMIT_NPROC = this many tasks
    max_output_bytes: int = 1 << 16  #: stdout/stderr, results and any written file (RLIMIT_FSIZE)
    network: bool = False  #: allow network (False = a fresh, empty network namespace)
    max_tasks: int = 16  #: with max_processes 1: RLIMIT_NPROC, the program's threads (itself included)


@dataclass
class SandboxResult:
    returncode: int | None  #: the program's exit code (negative: killed by that signal); None if unknown
    stdout: str
    stderr: str
    timed_out: bool
    wall_s: float
    load_error: str | None = None  #: exception type raised while loading the program (call mode)
    calls: list[tuple[bool, Any]] = field(default_factory=list)  #: per call: (True, value) or (False, error type)
    bad_result: str | None = None  #: why this run's output cannot be scored (malformed, oversize, no report)
    isolation: dict[str, bool] = field(default_factory=dict)  #: which ISOLATION_FEATURES held


def _minimal_env(workdir: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}


def _user_task_count() -> int:
    """Tasks (threads count) owned by this uid: outside a user namespace RLIMIT_NPROC counts them all."""
    uid, count = os.getuid(), 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                continue
    return count


def parse_results(raw: bytes, cap: int, n_calls: int, result: SandboxResult) -> None:
    """Fill ``load_error`` and ``calls`` from the results file: a ``{"load": null | type}`` line, then
    one ``{"value": v}`` or ``{"error": type}`` line per call. Calls without a line (the program died
    or ran out of time) failed; anything malformed, extra or cut at ``cap`` sets ``bad_result``."""
    result.calls = [(False, "no result")] * n_calls
    if not raw:
        result.load_error = "no result"
        return
    lines = raw.split(b"\n")
    if len(raw) >= cap or lines[-1] != b"" or len(lines) - 1 > 1 + n_calls:
        result.bad_result = "results oversize, cut or with extra lines"
        return
    try:
        parsed = [json.loads(line) for line in lines[:-1]]
        head = parsed[0]
        if type(head) is not dict or set(head) != {"load"} or type(head["load"]) not in (str, type(None)):
            raise ValueError("first line is not {'load': ...}")
        result.load_error = head["load"]
        if result.load_error is not None and len(parsed) > 1:
            raise ValueError("calls after a load error")
        for i, line in enumerate(parsed[1:]):
            if type(line) is dict and set(line) == {"value"}:
                result.calls[i] = (True, decode_value(line["value"]))
            elif type(line) is dict and set(line) == {"error"} and type(line["error"]) is str:
                result.calls[i] = (False, line["error"][:80])
            else:
                raise ValueError(f"result line {i + 1} is neither a value nor an error")
    except (ValueError, TypeError, RecursionError, OverflowError) as err:
        result.calls = [(False, "bad result")] * n_calls
        result.bad_result = f"malformed results: {type(err).__name__}: {str(err)[:80]}"


def parse_report(raw: bytes, result: SandboxResult) -> int | None:
    """Isolation, timeout and the program's wait status from init's report; None (and
    ``bad_result``) if it is missing or unparsable."""
    try:
        report = json.loads(raw)
        isolation, status = report["isolation"], report["status"]
        if type(isolation) is not dict or type(status) is not int or type(report["timed_out"]) is not bool:
            raise ValueError("wrong types")
    except (ValueError, TypeError, KeyError, RecursionError) as err:
        result.bad_result = result.bad_result or f"no isolation report ({type(err).__name__})"
        return None
    result.isolation = {k: bool(isolation.get(k)) for k in ISOLATION_FEATURES}
    result.timed_out = result.timed_out or report["timed_out"]
    return status


def run_sandboxed(
    program: str,
    calls: list[str] | None = None,
    stdin: str = "",
    limits: SandboxLimits | None = None,
    python: str | None = None,
    proxy: dict | None = None,
    channel: tuple[int, ...] = (),
) -> SandboxResult:
    """Run ``program``: as ``__main__`` reading ``stdin`` (``calls=None``), or load it as module
    ``solution`` and evaluate each expression of ``calls`` in its namespace (values in ``calls``).
    With ``proxy`` (see :func:`run_linked`) the sandbox is one end of a proxy channel: ``channel``
    (read fd, write fd) passes to the program process and is closed here once it started."""
    limits = limits or SandboxLimits()
    pending = list(channel)  # closed exactly once: by _spawn once the process started, else below
    root = Path(tempfile.mkdtemp(prefix="trepo-sandbox-"))
    try:
        for name in ("work", "io", "jail"):
            (root / name).mkdir()
        job = {"program": program, "calls": calls, **({"proxy": {**proxy, "source": PROXY_SOURCE}} if proxy else {})}
        (root / "io" / "job.json").write_text(json.dumps(job))
        (root / "io" / "stdin.txt").write_text(stdin)
        cfg = {"job_path": str(root / "io" / "job.json"), "workdir": str(root / "work"), "jail": str(root / "jail"),
               "cpu_time": limits.cpu_time, "wall_time": limits.wall_time, "memory_mb": limits.memory_mb,
               "max_output_bytes": limits.max_output_bytes, "max_processes": limits.max_processes,
               "max_tasks": limits.max_tasks, "network": limits.network, "nproc_base": _user_task_count(),
               "channel": pending}
        return _spawn(cfg, root / "io", limits, python or sys.executable, calls)
    finally:
        for fd in pending:
            _close(fd)
        shutil.rmtree(root, ignore_errors=True)


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def run_linked(program: str, tests: list[str], spec: dict, limits: SandboxLimits,
               python: str | None = None) -> tuple[SandboxResult, SandboxResult]:
    """Run ``tests`` unchanged in a judge's sandbox while ``program`` runs in its own, joined by two
    pipes (reward_models/_proxy.py): the test's program names are proxies whose calls travel as JSON
    and whose results come back as plain values. ``spec``: ``names``/``imports`` per test, ``prefix``,
    ``entry_point``. Returns (program's result: ``load_error``; judge's result: one call per test,
    ``(True, True)`` = passed)."""
    to_program, to_judge = os.pipe(), os.pipe()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-program") as pool:
        served = pool.submit(run_sandboxed, program, [], limits=limits, python=python, proxy={"role": "serve"},
                             channel=(to_program[0], to_judge[1]))
        judged = run_sandboxed("", tests, limits=limits, python=python,
                               proxy={**spec, "role": "judge", "cap": limits.max_output_bytes},
                               channel=(to_judge[0], to_program[1]))
        return served.result(), judged


def _spawn(cfg: dict, io_dir: Path, limits: SandboxLimits, python: str, calls: list[str] | None) -> SandboxResult:
    report_r, report_w = os.pipe()
    cap = limits.max_output_bytes
    with open(io_dir / "stdin.txt", "rb") as fin, open(io_dir / "stdout", "wb") as fout, \
            open(io_dir / "stderr", "wb") as ferr, open(io_dir / "results", "wb+") as fres:
        cfg = {**cfg, "report_fd": report_w, "results_fd": fres.fileno()}
        start = time.perf_counter()
        try:
            proc = subprocess.Popen(
                [python, "-I", BOOT, json.dumps(cfg)], stdin=fin, stdout=fout, stderr=ferr, cwd=cfg["workdir"],
                env=_minimal_env(cfg["workdir"]), start_new_session=True,
                pass_fds=(report_w, fres.fileno(), *cfg["channel"]),
            )
        finally:
            os.close(report_w)
            while cfg["channel"]:
                _close(cfg["channel"].pop())
        killed = False
        try:
            # the init kills at wall_time after the program starts; this backstop also covers the harness's
            # own start, which takes seconds on a starved machine
            proc.wait(timeout=2 * limits.wall_time + 10.0)
        except subprocess.TimeoutExpired:
            killed = True
        finally:
            _kill_group(proc)
        wall = time.perf_counter() - start
    result = SandboxResult(None, _read_capped(io_dir / "stdout", cap), _read_capped(io_dir / "stderr", cap),
                           killed, wall)
    fcntl.fcntl(report_r, fcntl.F_SETFL, os.O_NONBLOCK)
    try:
        raw_report = os.read(report_r, 1 << 16)
    except BlockingIOError:
        raw_report = b""
    finally:
        os.close(report_r)
    status = parse_report(raw_report, result)
    if status is not None:
        result.returncode = os.waitstatus_to_exitcode(status)
        # RLIMIT_CPU ends in SIGXCPU/SIGKILL: count it as a timeout too
        result.timed_out = result.timed_out or result.returncode in (-signal.SIGXCPU, -signal.SIGKILL)
    if calls is not None:
        with open(io_dir / "results", "rb") as f:
            parse_results(f.read(cap + 1), cap, len(calls), result)
    return result


def _read_capped(path: Path, cap: int) -> str:
    with open(path, "rb") as f:
        return f.read(cap).decode("utf-8", errors="replace")


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
