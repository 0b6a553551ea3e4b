"""Code execution reward: run the completion's Python in a sandbox and judge its outputs in the host.

The sandbox (reward_models/sandbox.py) limits CPU time, wall time, memory, tasks and output, runs
with a minimal environment and, where the kernel allows, in its own user + pid + network + mount
namespaces as an unprivileged uid under seccomp, in a jail that shows only the interpreter. It
evaluates the calls of the tests (reward_models/code_tests.py) or the stdin runs and sends back
plain values or stdout; the expected values never enter it, and the comparison happens here. Tests
that cannot be split run unchanged in a judge's sandbox that reaches the program only through
proxies whose results come back as plain values (reward_models/_proxy.py). Where
an isolation feature is missing the reward refuses to run untrusted code unless
``allow_unisolated: true``. docs/rewards.md says honestly what it does not stop.
"""
from __future__ import annotations

import logging
import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Literal

import torch

from reward_models.base import MISSING, Missing, OnError, Reward, check_literal, check_missing, metadata_value
from reward_models.code_tests import (
    ProxyTests,
    SplitTest,
    host_judgeable,
    judge_in_host,
    judge_in_sandbox,
    proxy_tests,
    split_tests,
)
from reward_models.sandbox import (
    ISOLATION_FEATURES,
    SandboxLimits,
    SandboxResult,
    probe_isolation,
    run_linked,
    run_sandboxed,
)
from reward_models.types import RewardOutput, Samples

log = logging.getLogger("reward_models")
_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def _trim(text: str, indented: bool) -> str:
    return text.lstrip("\n").rstrip() if indented and text.strip() else text.strip()


def extract_code(text: str, mode: str = "auto", indented: bool = False) -> str:
    """The program in a completion. ``"fenced"``: the last ```` ```python ```` (or ``py``/``python3``)
    block, else the last untagged ```` ``` ```` block; ``"raw"``: the whole text; ``"auto"``: fenced,
    else raw. Returns ``""`` when there is no code. ``indented``: keep the first line's indentation
    (a function body that continues a prompt, as HumanEval's completions do)."""
    if mode == "raw":
        return _trim(text, indented)
    blocks = _FENCE_RE.findall(text)
    tagged = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
    untagged = [body for lang, body in blocks if not lang]
    if tagged or untagged:
        return _trim((tagged or untagged)[-1], indented)
    return _trim(text, indented) if mode == "auto" and "```" not in text else ""


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


CodeMode = Literal["fraction", "all"]


class CodeExecution(Reward):
    """Fraction of the row's tests the completion's code passes (``mode="all"``: 1 iff all pass).

    Assert tests are split (:func:`~reward_models.code_tests.split_test`): one sandboxed process
    loads the program as module ``solution`` and evaluates every call of the row's tests; each test
    passes iff its judge holds on the returned plain values (calls after a crash or timeout fail).
    A row with a test that cannot be split (loops, computed arguments, HumanEval's ``check``) runs its
    tests unchanged in a judge's sandbox whose program names are proxies to the program's sandbox
    (:func:`~reward_models.sandbox.run_linked`); each test passes iff it ends without an exception.
    I/O tests run the program as ``__main__`` once per test with the input on stdin and compare
    stdout (:func:`normalize_output`) here. No code scores 0. A row whose sandbox output is malformed,
    oversize or lacks the isolation report scores 0 (NaN under ``on_error: nan``); the other rows
    keep their scores. Metrics: ``timeout`` (some run hit a time limit), ``no_code`` (no program
    found), ``bad_result`` (that row's sandbox output could not be scored).
    """

    def __init__(
        self,
        tests_key: str = "tests",
        mode: CodeMode = "fraction",
        extract: Literal["auto", "fenced", "raw"] = "auto",
        cpu_time: float = 2.0,
        wall_time: float = 5.0,
        memory_mb: int = 512,
        max_processes: int = 1,
        max_output_bytes: int = 65536,
        workers: int = 2,
        max_tasks: int = 16,
        allow_unisolated: bool = False,
        missing: Missing = "raise",
        python: str | None = None,
        on_error: OnError = "raise",
        entry_point_key: str = "entry_point",
        prefix_key: str | None = None,
    ) -> None:
        """
        Args:
            tests_key: metadata field with the tests (see :func:`parse_tests`).
            mode: ``"fraction"`` of tests passed, or ``"all"`` (1.0 iff every test passes).
            extract: where the program is in the completion (see :func:`extract_code`).
            cpu_time: CPU seconds per run (RLIMIT_CPU).
            wall_time: wall seconds per run; the process group is killed after it.
            memory_mb: address-space limit per run (RLIMIT_AS).
            max_processes: 1 = the program may not create processes (seccomp); more = RLIMIT_NPROC
                of that many tasks (processes and threads).
            max_output_bytes: cap on stdout/stderr, on the returned values and on any file written.
            workers: sandboxes run at once.
            max_tasks: with ``max_processes: 1``, RLIMIT_NPROC: the program's threads, itself included.
            allow_unisolated: run untrusted code even where the sandbox lacks an isolation feature
                (:data:`~reward_models.sandbox.ISOLATION_FEATURES`; a warning names them). Default: refuse.
            missing: ``"raise"`` or ``"nan"`` when a row has no tests.
            python: interpreter for the sandbox (default: this one).
            on_error: ``"raise"`` or ``"nan"`` (NaN + ``failed``) when scoring itself fails; also
                what a row with an unscorable sandbox output gets: 0 (``raise``) or NaN (``nan``).
            entry_point_key: metadata field naming the function a HumanEval-style test's
                ``check(candidate)`` is called on (when the test defines ``check`` and does not call it).
            prefix_key: metadata field with trusted code put before the program (HumanEval's
                ``prompt``: imports, helpers, the signature); the program keeps its first line's
                indentation (a body continuing the prompt). Proxied tests run it in the judge too,
                so helpers they use (HumanEval/32's ``poly``) are the dataset's; the entry point stays
                the program's.
        """
        check_literal("CodeExecution", "mode", mode, CodeMode)
        if workers < 1 or max_processes < 1 or max_tasks < 1 or memory_mb < 16 or cpu_time <= 0 or wall_time <= 0:
            raise ValueError("CodeExecution: workers, max_processes, max_tasks >= 1, memory_mb >= 16, cpu_time, "
                             "wall_time > 0")
        self.tests_key, self.mode, self.extract, self.workers = tests_key, mode, extract, int(workers)
        self.limits = SandboxLimits(cpu_time, wall_time, int(memory_mb), int(max_processes), int(max_output_bytes),
                                    max_tasks=int(max_tasks))
        self.allow_unisolated, self.python = allow_unisolated, python
        self.entry_point_key, self.prefix_key = entry_point_key, prefix_key
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
        elif result is not None and not result.bad_result and not self.allow_unisolated:
            lacking = self._lacking(result.isolation)
            if lacking:
                raise RuntimeError(f"CodeExecution: a sandboxed run lost isolation {lacking}")

    def _assert_job(self, samples: Samples, i: int, tests: list[str]) -> list[SplitTest] | ProxyTests:
        """Split tests where every test splits; else the row's tests unchanged, for the proxy path."""
        try:
            return split_tests(tests, i, self.tests_key)
        except ValueError:
            meta = samples.metadata[i] if i < len(samples.metadata) else {}
            entry = meta.get(self.entry_point_key)
            return proxy_tests(tests, i, self.tests_key, entry if isinstance(entry, str) else None,
                               self._prefix(samples, i))

    def _prefix(self, samples: Samples, i: int) -> str:
        if self.prefix_key is None:
            return ""
        value = metadata_value(samples, i, self.prefix_key, "CodeExecution", "raise")
        if not isinstance(value, str):
            raise ValueError(f"CodeExecution: metadata row {i} {self.prefix_key!r} must be a string of code")
        return value

    def _jobs(self, samples: Samples) -> tuple[list[tuple[int, str, Any]], list[int], list[float]]:
        """One job per sandbox run: (row, program, split assert tests | ProxyTests | (stdin, expected))."""
        jobs, n_tests, no_code = [], [], []
        for i, completion in enumerate(samples.completions):
            value = metadata_value(samples, i, self.tests_key, "CodeExecution", self.missing)
            program = extract_code(completion, self.extract, indented=self.prefix_key is not None)
            no_code.append(float(not program))
            if value is MISSING:
                n_tests.append(-1)
                continue
            kind, tests = parse_tests(value, i, self.tests_key)
            n_tests.append(len(tests))
            if program and self.prefix_key is not None:
                program = f"{self._prefix(samples, i)}\n{program}"
            if program and kind == "assert":
                jobs.append((i, program, self._assert_job(samples, i, tests)))
            elif program:
                jobs.extend((i, program, pair) for pair in tests)
        return jobs, n_tests, no_code

    def _judge(self, tests: list[SplitTest], res: SandboxResult) -> int:
        """Tests passed: each judge on the values of its own calls, in the host or a clean sandbox."""
        passed, deferred = 0, []
        for test in tests:
            outcomes = res.calls[test.first:test.first + len(test.calls)]
            if res.load_error is not None or not all(ok for ok, _ in outcomes):
                continue
            values = {f"__v{test.first + k}": value for k, (_, value) in enumerate(outcomes)}
            if host_judgeable(test):
                passed += judge_in_host(test, values)
            else:
                deferred.append((test, values))
        return passed + (sum(judge_in_sandbox(deferred, self.limits, self.python)) if deferred else 0)

    def _run(self, job: tuple[int, str, Any]) -> tuple[int, int, bool, SandboxResult]:
        i, program, tests = job
        if isinstance(tests, ProxyTests):
            served, judged = run_linked(program, list(tests.tests), tests.spec(), self.limits, self.python)
            res = replace(served, timed_out=served.timed_out or judged.timed_out,
                          bad_result=served.bad_result or judged.bad_result,
                          isolation={k: served.isolation.get(k, False) and v for k, v in judged.isolation.items()})
            ok = not res.bad_result and served.load_error is None
            return i, ok * sum(good and value is True for good, value in judged.calls), res.timed_out, res
        if isinstance(tests, list):
            res = run_sandboxed(program, [c for t in tests for c in t.calls], limits=self.limits, python=self.python)
            return i, 0 if res.bad_result else self._judge(tests, res), res.timed_out, res
        stdin, expected = tests
        res = run_sandboxed(program, None, stdin=stdin, limits=self.limits, python=self.python)
        ok = res.returncode == 0 and not res.timed_out and normalize_output(res.stdout) == normalize_output(expected)
        return i, int(ok and not res.bad_result), res.timed_out, res

    def forward(self, samples: Samples) -> RewardOutput:
        jobs, n_tests, no_code = self._jobs(samples)
        if jobs:
            self._check_isolation()
        n = len(samples)
        passed, timeout, bad = [0] * n, [0.0] * n, [0.0] * n
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="sandbox") as pool:
            for i, ok, timed_out, res in pool.map(self._run, jobs):
                self._check_isolation(res)
                if res.bad_result:
                    log.warning("CodeExecution: row %d scored as failed: %s", i, res.bad_result)
                passed[i] += ok
                timeout[i] = max(timeout[i], float(timed_out))
                bad[i] = max(bad[i], float(res.bad_result is not None))
        rewards = []
        for i, total in enumerate(n_tests):
            if total < 0 or (bad[i] and self.on_error == "nan"):
                rewards.append(math.nan)
            elif bad[i]:
                rewards.append(0.0)
            elif self.mode == "all":
                rewards.append(float(total > 0 and passed[i] == total))
            else:
                rewards.append(passed[i] / total)
        metrics = {"timeout": torch.tensor(timeout), "no_code": torch.tensor(no_code), "bad_result": torch.tensor(bad)}
        return RewardOutput(torch.tensor(rewards), metrics)
