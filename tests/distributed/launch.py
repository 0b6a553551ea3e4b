"""Launch a worker script on several local processes, torchrun-style, with a hard timeout.

Each rank gets ``MASTER_ADDR/MASTER_PORT/WORLD_SIZE/RANK/LOCAL_RANK`` in its environment, so
Lightning's environment sees externally created processes and never re-launches the script.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RankResult:
    rank: int
    returncode: int | None  # None: killed at the timeout
    output: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
               PYTHONWARNINGS="ignore")
    return env


def launch(args: list[str], nprocs: int, timeout: float, logdir: Path) -> list[RankResult]:
    """Run ``python <args>`` on ``nprocs`` ranks; kill every rank (process group) once ``timeout`` s have passed."""
    logdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs, logs = [], []
    for rank in range(nprocs):
        env = base_env()
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(nprocs), RANK=str(rank),
                   LOCAL_RANK=str(rank), NODE_RANK="0", LOCAL_WORLD_SIZE=str(nprocs))
        log = open(logdir / f"rank{rank}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True))
    deadline = time.monotonic() + timeout
    codes: list[int | None] = [None] * nprocs
    try:
        while time.monotonic() < deadline and any(c is None for c in codes):
            codes = [p.poll() for p in procs]
            if any(c not in (None, 0) for c in codes):  # one rank failed: the others would wait forever
                time.sleep(3)
                codes = [p.poll() for p in procs]
                break
            time.sleep(0.2)
    finally:
        for p, c in zip(procs, codes, strict=True):
            if c is None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for log in logs:
            log.close()
    return [RankResult(r, codes[r], (logdir / f"rank{r}.log").read_text()) for r in range(nprocs)]


def check(results: list[RankResult]) -> None:
    """Fail with the tail of the log of every rank that did not exit cleanly."""
    bad = [r for r in results if r.returncode != 0]
    if bad:
        what = "\n".join(
            f"--- rank {r.rank}: "
            + ("TIMED OUT (killed)" if r.returncode is None else f"exit {r.returncode}")
            + "\n"
            + r.output[-4000:]
            for r in bad
        )
        raise AssertionError(f"distributed run failed\n{what}")


def run_command(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` that, on timeout, kills the whole process group (the ranks a launcher started too)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            **kwargs)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}\n{out[-4000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")
