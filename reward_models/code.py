"""Code execution reward: run the completion's Python against the row's tests in a sandbox.

The sandbox (reward_models/sandbox.py) limits CPU time, wall time, memory, processes and output,
runs in a fresh temporary directory with a minimal environment and, where the kernel allows, in its
own user + pid + network + mount namespaces as an unprivileged uid, with no network, a read-only
filesystem and a seccomp filter. Where a feature is missing the reward refuses to run untrusted code
unless ``allow_unisolated: true``. docs/rewards.md says honestly what it does not stop.
"""
from __future__ import annotations

import logging
import math
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import torch

from reward_models.base import MISSING, Reward, check_missing, metadata_value
from reward_models.sandbox import ISOLATION_FEATURES, SandboxLimits, SandboxResult, probe_isolation, run_sandboxed
from reward_models.types import RewardOutput, Samples

log = logging.getLogger("reward_models")
_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(text: str, mode: str = "auto") -> str:
    """The program in a completion. ``"fenced"``: the last ```` ```python ```` (or ``py``/``python3``)
    block, else the last untagged ```` ``` ```` block; ``"raw"``: the whole text; ``"auto"``: fenced,
    else raw. Returns ``""`` when there is no code."""
    if mode == "raw":
        return text.strip()
    blocks = _FENCE_RE.findall(text)
    tagged = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
    untagged = [body for lang, body in blocks if not lang]
    if tagged or untagged:
        return (tagged or untagged)[-1].strip()
    return text.strip() if mode == "auto" and "```" not in text else ""


def normalize_output(text: str) -> str:
    """Compare stdout line by line, ignoring trailing spaces and trailing blank lines."""
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).rstrip()


def parse_tests(value: Any, i: int, key: str) -> tuple[str, list[Any]]:
    """``("assert", [code, ...])`` or ``("io", [(stdin, expected stdout), ...])`` from a row's tests.

    Accepted: a string of asserts; a list of assert strings; a list of ``{"input", "output"}``;
    ``{"inputs": [...], "outputs": [...]}`` (APPS style).
    """
    if isinstance(value, str):
        return "assert", [value]
    if isinstance(value, dict) and "inputs" in value and "outputs" in value:
        value = [{"input": a, "output": b} for a, b in zip(value["inputs"], value["outputs"], strict=False)]
    if isinstance(value, list) and value and all(isinstance(t, str) for t in value):
        return "assert", list(value)
    if isinstance(value, list) and value and all(isinstance(t, dict) and "input" in t and "output" in t for t in value):
        return "io", [(str(t["input"]), str(t["output"])) for t in value]
    raise ValueError(
        f"CodeExecution: metadata row {i} {key!r} must be a string of asserts, a list of assert strings, "
        f"a list of {{'input', 'output'}} or {{'inputs', 'outputs'}}; got {type(value).__name__}"
    )


class CodeExecution(Reward):
    """Fraction of the row's tests the completion's code passes (``mode="all"``: 1 iff all pass).

    Assert tests run in one sandboxed process after the program is loaded as module ``solution``
    (a test passes if it raises nothing; tests after a crash or timeout fail). I/O tests run the
    program as ``__main__`` once per test with the input on stdin and compare stdout
    (:func:`normalize_output`). No code scores 0. Metrics: ``timeout`` (some run hit a time limit),
    ``no_code`` (no program found).
    """

    def __init__(
        self,
        tests_key: str = "tests",
        mode: Literal["fraction", "all"] = "fraction",
        extract: Literal["auto", "fenced", "raw"] = "auto",
        cpu_time: float = 2.0,
        wall_time: float = 5.0,
        memory_mb: int = 512,
        max_processes: int = 1,
        max_output_bytes: int = 65536,
        workers: int = 2,
        allow_unisolated: bool = False,
        missing: Literal["raise", "nan"] = "raise",
        python: str | None = None,
        on_error: Literal["raise", "nan"] = "raise",
    ) -> None:
        """
        Args:
            tests_key: metadata field with the tests (see :func:`parse_tests`).
            mode: ``"fraction"`` of tests passed, or ``"all"`` (1.0 iff every test passes).
            extract: where the program is in the completion (see :func:`extract_code`).
            cpu_time: CPU seconds per run (RLIMIT_CPU).
            wall_time: wall seconds per run; the process group is killed after it.
            memory_mb: address-space limit per run (RLIMIT_AS).
            max_processes: 1 = the program may not create processes (seccomp); more = RLIMIT_NPROC.
            max_output_bytes: cap on stdout/stderr and on any file written.
            workers: sandboxes run at once.
            allow_unisolated: run untrusted code even where the sandbox lacks an isolation feature
                (:data:`~reward_models.sandbox.ISOLATION_FEATURES`; a warning names them). Default: refuse.
            missing: ``"raise"`` or ``"nan"`` when a row has no tests.
            python: interpreter for the sandbox (default: this one).
            on_error: ``"raise"`` or ``"nan"`` (NaN + ``failed``) when scoring itself fails.
        """
        if mode not in ("fraction", "all"):
            raise ValueError(f"CodeExecution: mode must be 'fraction' or 'all', got {mode!r}")
        if workers < 1 or max_processes < 1 or memory_mb < 16 or cpu_time <= 0 or wall_time <= 0:
            raise ValueError("CodeExecution: workers, max_processes >= 1, memory_mb >= 16, cpu_time, wall_time > 0")
        self.tests_key, self.mode, self.extract, self.workers = tests_key, mode, extract, int(workers)
        self.limits = SandboxLimits(cpu_time, wall_time, int(memory_mb), int(max_processes), int(max_output_bytes))
        self.allow_unisolated, self.python = allow_unisolated, python
        self.missing = check_missing("CodeExecution", missing)
        self.set_policy(on_error, None)
        self.isolation: dict[str, bool] | None = None

    def _lacking(self, isolation: dict[str, bool]) -> list[str]:
        needed = [k for k in ISOLATION_FEATURES if k != "no_fork" or self.limits.max_processes <= 1]
        return [k for k in needed if not isolation.get(k)]

    def _check_isolation(self, result: SandboxResult | None = None) -> None:
        """Before the first run: probe this machine's sandbox and refuse (or, with ``allow_unisolated``,
        warn) when a feature is missing. After each run: the run must have held what the probe did."""
        if result is None and self.isolation is None:
            self.isolation = dict(probe_isolation(self.python, self.limits.max_processes))
            lacking = self._lacking(self.isolation)
            if lacking and not self.allow_unisolated:
                raise RuntimeError(
                    f"CodeExecution: the sandbox lacks {lacking} on this machine; refusing to run untrusted code "
                    "(set allow_unisolated: true to run it anyway, on a machine you can afford to lose)")
            if lacking:
                log.warning("CodeExecution: sandbox runs WITHOUT %s isolation (allow_unisolated)", lacking)
        elif result is not None and result.isolation and not self.allow_unisolated:
            lacking = self._lacking(result.isolation)
            if lacking:
                raise RuntimeError(f"CodeExecution: a sandboxed run lost isolation {lacking}")

    def _jobs(self, samples: Samples) -> tuple[list[tuple[int, str, Any]], list[int], list[float]]:
        """One job per sandbox run: (row, program, assert tests | (stdin, expected))."""
        jobs, n_tests, no_code = [], [], []
        for i, completion in enumerate(samples.completions):
            value = metadata_value(samples, i, self.tests_key, "CodeExecution", self.missing)
            program = extract_code(completion, self.extract)
            no_code.append(float(not program))
            if value is MISSING:
                n_tests.append(-1)
                continue
            kind, tests = parse_tests(value, i, self.tests_key)
            n_tests.append(len(tests))
            if program and kind == "assert":
                jobs.append((i, program, tests))
            elif program:
                jobs.extend((i, program, pair) for pair in tests)
        return jobs, n_tests, no_code

    def _run(self, job: tuple[int, str, Any]) -> tuple[int, int, bool, SandboxResult]:
        i, program, tests = job
        if isinstance(tests, list):
            res = run_sandboxed(program, tests, limits=self.limits, python=self.python)
            return i, sum(res.tests), res.timed_out, res
        stdin, expected = tests
        res = run_sandboxed(program, None, stdin=stdin, limits=self.limits, python=self.python)
        ok = res.returncode == 0 and not res.timed_out and normalize_output(res.stdout) == normalize_output(expected)
        return i, int(ok), res.timed_out, res

    def forward(self, samples: Samples) -> RewardOutput:
        jobs, n_tests, no_code = self._jobs(samples)
        if jobs:
            self._check_isolation()
        passed, timeout = [0] * len(samples), [0.0] * len(samples)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="sandbox") as pool:
            for i, ok, timed_out, res in pool.map(self._run, jobs):
                self._check_isolation(res)
                passed[i] += ok
                timeout[i] = max(timeout[i], float(timed_out))
        rewards = []
        for i, total in enumerate(n_tests):
            if total < 0:
                rewards.append(math.nan)
            elif self.mode == "all":
                rewards.append(float(total > 0 and passed[i] == total))
            else:
                rewards.append(passed[i] / total)
        return RewardOutput(torch.tensor(rewards), {"timeout": torch.tensor(timeout), "no_code": torch.tensor(no_code)})
