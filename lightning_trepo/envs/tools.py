"""Tools as environments: a model turn that contains ``<name>args</name>`` calls tool ``name`` and the tool's
text answer is the observation; a turn without a tool call is the final answer and ends the episode.

Tools are plain Python: :class:`Calculator` (exact integer / decimal arithmetic, no ``eval``),
:class:`PythonTool` (a program run in the project's sandbox, :mod:`reward_models.sandbox`; its stdout is the
answer) and :class:`FunctionTool` (any ``module:function`` taking the argument text and returning text).
"""
from __future__ import annotations

import ast
import importlib
import operator
import re
from collections.abc import Callable
from typing import Any

from lightning_trepo.envs.base import Environment, StepResult

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}


class Tool:
    """A named text -> text function the model can call as ``<name>args</name>``."""

    name: str = "tool"

    def __call__(self, args: str) -> str:
        raise NotImplementedError(f"{type(self).__name__}.__call__")


class Calculator(Tool):
    """``<calc>12*(3+4)</calc>`` -> ``84``: + - * / // % ** and parentheses on numbers, nothing else.
    An expression it cannot read answers ``error: ...`` (the model sees that, the episode goes on)."""

    def __init__(self, name: str = "calc", max_exponent: int = 64, max_chars: int = 200) -> None:
        """
        Args:
            name: the tag the model writes (``<calc>...</calc>``).
            max_exponent: largest exponent ``**`` accepts (keeps one call cheap).
            max_chars: longest expression accepted.
        """
        self.name, self.max_exponent, self.max_chars = name, max_exponent, max_chars

    def __call__(self, args: str) -> str:
        text = args.strip()
        if len(text) > self.max_chars:
            return f"error: expression longer than {self.max_chars} characters"
        try:
            value = self._eval(ast.parse(text, mode="eval").body)
        except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, TypeError) as err:
            return f"error: {type(err).__name__}"
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return str(value)

    def _eval(self, node: ast.AST) -> int | float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = self._eval(node.left), self._eval(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > self.max_exponent:
                raise ValueError("exponent too large")
            return _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](self._eval(node.operand))
        raise ValueError(f"unsupported expression element {type(node).__name__}")


class PythonTool(Tool):
    """``<python>print(2**10)</python>`` -> ``1024``: the program runs in a fresh sandboxed subprocess
    (:func:`reward_models.sandbox.run_sandboxed`: CPU, memory and wall-clock limits, no network); its stdout,
    or the last line of its stderr on failure, is the answer (cut to ``max_chars``)."""

    def __init__(self, name: str = "python", cpu_time: float = 2.0, wall_time: float = 5.0, memory_mb: int = 512,
                 max_chars: int = 500) -> None:
        """
        Args:
            name: the tag the model writes.
            cpu_time: CPU seconds per call.
            wall_time: wall-clock seconds per call.
            memory_mb: address-space limit per call.
            max_chars: longest answer returned to the model.
        """
        self.name, self.cpu_time, self.wall_time, self.memory_mb = name, cpu_time, wall_time, memory_mb
        self.max_chars = max_chars

    def __call__(self, args: str) -> str:
        from reward_models.sandbox import SandboxLimits, run_sandboxed

        limits = SandboxLimits(cpu_time=self.cpu_time, wall_time=self.wall_time, memory_mb=self.memory_mb)
        result = run_sandboxed(args, limits=limits)
        if result.timed_out:
            return "error: timed out"
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines()
            return "error: " + (lines[-1] if lines else f"exit code {result.returncode}")[: self.max_chars]
        return result.stdout.strip()[: self.max_chars]


class FunctionTool(Tool):
    """A plain Python function ``module:function`` (str -> str) as a tool, imported by path."""

    def __init__(self, function: str, name: str = "tool") -> None:
        """
        Args:
            function: import path ``package.module:function``; called with the argument text, returns text.
            name: the tag the model writes.
        """
        module, _, attr = function.partition(":")
        if not module or not attr:
            raise ValueError(f"FunctionTool.function {function!r}: expected 'package.module:function'")
        self.function_path, self.name = function, name
        self.function: Callable[[str], Any] = getattr(importlib.import_module(module), attr)

    def __call__(self, args: str) -> str:
        return self.function(args)


class ToolEnv(Environment):
    """The model calls tools by writing ``<name>args</name>``; the first call of a turn is run and its answer is
    the observation. A turn with no call is the final answer: the episode ends."""

    def __init__(self, tools: list[Tool], max_calls: int = 4, name: str = "tools") -> None:
        """
        Args:
            tools: the tools the model may call, by their ``name`` tags.
            max_calls: tool calls answered per episode; the next one ends the episode.
            name: name in errors and metrics.
        """
        if not tools:
            raise ValueError("ToolEnv.tools: give at least one tool")
        self.tools = {tool.name: tool for tool in tools}
        self.max_calls, self.name = max_calls, name
        names = "|".join(re.escape(n) for n in self.tools)
        self._call = re.compile(rf"<({names})>(.*?)</\1>", re.DOTALL)
        self.calls = 0

    def reset(self, prompt: str, metadata: dict[str, Any]) -> None:
        self.calls = 0

    def step(self, action: str) -> StepResult:
        match = self._call.search(action)
        if match is None or self.calls >= self.max_calls:
            return StepResult(done=True)
        self.calls += 1
        answer = self.tools[match.group(1)](match.group(2))
        if not isinstance(answer, str):
            raise TypeError(f"tool {match.group(1)!r} returned {type(answer).__name__}, expected text")
        return StepResult(observation=answer)
