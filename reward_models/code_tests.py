"""Assert tests judged outside the program: split each test into the *calls* the sandbox evaluates
and the *judge* that compares their values, in the host.

``assert add(1, 2) == 3`` becomes the call ``add(1, 2)`` (sent to the sandbox: only the program's
names, attributes and literal arguments, never the expected ``3``) and the judge
``assert __v0 == 3``, evaluated on the decoded plain value of the call. A program that reaches every
byte of its own process still learns no expected value, and a custom ``__eq__`` never leaves it.

Tests are Python statements: ``assert`` (any number), ``import``/``from ... import`` of the
standard library and ``from solution import ...`` (dropped: those names are the program's), and
assignments of program-free values. The program is touched only through *call chains*: a program
name, then any mix of ``.attr``, ``[literal]`` and ``(literal, ..., key=literal)``, e.g.
``Solution().two_sum([2, 7], 9)[0]``. Anything else that touches a program name (an argument
computed from a loop variable, ``check(add)``, a ``try`` block) cannot be split: such a row's tests
run unchanged in a judge's sandbox with proxies for the program's names (:func:`proxy_tests`,
:func:`~reward_models.sandbox.run_linked`). Judges made of literals, comparisons, arithmetic and a
few pure builtins run in the host (:func:`judge_in_host`); the rest run in a second, clean sandbox
holding only the values.
"""
from __future__ import annotations

import ast
import builtins
import inspect
import json
import sys
from dataclasses import dataclass
from typing import Any

from reward_models._sandbox_boot import encode
from reward_models.sandbox import SandboxLimits, decode_value, run_sandboxed

#: builtins a host-side judge may call (pure functions and constructors of plain values)
SAFE_BUILTINS = {name: getattr(builtins, name) for name in (
    "abs", "all", "any", "bool", "dict", "enumerate", "float", "frozenset", "int", "isinstance", "len", "list",
    "max", "min", "reversed", "round", "set", "sorted", "str", "sum", "tuple", "zip", "complex")}
SMALL = 64  #: the largest constant factor or exponent a host-side judge may apply to a program's value
_HOST_NODES = (ast.Expression, ast.Constant, ast.Name, ast.Load, ast.Tuple, ast.List, ast.Set, ast.Dict,
               ast.UnaryOp, ast.BinOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Subscript, ast.Slice, ast.Call,
               ast.keyword, ast.unaryop, ast.operator, ast.boolop, ast.cmpop)


@dataclass(frozen=True)
class SplitTest:
    """One assert test, split: ``calls`` (sources the sandbox evaluates) and ``judge`` (the test
    with call ``k`` replaced by the name ``__v<first + k>``)."""

    calls: tuple[str, ...]
    judge: str
    first: int  #: index of this test's first call among the row's calls


class _Splitter(ast.NodeTransformer):
    """Replace every program call chain by ``__v<k>``; refuse other uses of program names."""

    def __init__(self, bound: set[str], first: int) -> None:
        self.bound, self.first, self.calls = bound, first, []

    def _touches_program(self, node: ast.AST) -> bool:
        return any(isinstance(n, ast.Name) and n.id not in self.bound for n in ast.walk(node))

    def _is_chain(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return node.id not in self.bound
        if isinstance(node, ast.Attribute):
            return self._is_chain(node.value)
        if isinstance(node, ast.Subscript):
            return self._is_chain(node.value) and _is_literal(node.slice)
        if isinstance(node, ast.Call):
            return self._is_chain(node.func) and all(_is_literal(a) for a in node.args) and all(
                k.arg is not None and _is_literal(k.value) for k in node.keywords)
        return False

    def visit(self, node: ast.AST) -> Any:
        if isinstance(node, ast.expr) and self._is_chain(node):
            self.calls.append(ast.unparse(node))
            return ast.copy_location(ast.Name(f"__v{self.first + len(self.calls) - 1}", ast.Load()), node)
        if isinstance(node, ast.Call) and self._touches_program(node.func):
            raise ValueError(f"{ast.unparse(node)[:80]!r} calls the program with arguments that are not literals")
        return super().visit(node)


def _is_literal(node: ast.AST) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def _bound_names(tree: ast.Module) -> set[str]:
    """Names the test itself defines (assignments, imports, loop and comprehension variables, lambda
    arguments) plus the builtins: every other name belongs to the program."""
    bound = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif isinstance(node, ast.Import | ast.ImportFrom) and getattr(node, "module", None) != "solution":
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return bound


def split_test(source: str, first: int = 0) -> SplitTest:
    """Split one test (see the module docstring); ValueError says why a test cannot be split."""
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise ValueError(f"not valid Python: {err.msg}") from None
    body = []
    for stmt in tree.body:
        if isinstance(stmt, ast.ImportFrom) and stmt.module == "solution":
            continue  # its names are the program's, which the splitter already treats so
        if not isinstance(stmt, ast.Assert | ast.Import | ast.ImportFrom | ast.Assign | ast.Expr):
            raise ValueError(f"a {type(stmt).__name__} statement; tests may hold asserts, imports and assignments")
        body.append(stmt)
    splitter = _Splitter(_bound_names(tree), first)
    judge = ast.Module([splitter.visit(stmt) for stmt in body], [])
    return SplitTest(tuple(splitter.calls), ast.unparse(ast.fix_missing_locations(judge)), first)


def split_tests(tests: list[str], row: int, key: str) -> list[SplitTest]:
    """Split every test of a row, numbering their calls consecutively."""
    out: list[SplitTest] = []
    for j, test in enumerate(tests):
        try:
            out.append(split_test(test, sum(len(t.calls) for t in out)))
        except ValueError as err:
            raise ValueError(f"CodeExecution: metadata row {row} {key!r} test {j} cannot be judged outside the "
                             f"program: {err} (see docs/rewards.md, 'assert tests')") from None
    return out


def _small(node: ast.AST) -> bool:
    value = node.value if isinstance(node, ast.Constant) else None
    return isinstance(value, int | float) and not isinstance(value, bool) and abs(value) <= SMALL


def _bounded(node: ast.AST) -> bool:
    """``a * b``, ``a ** b``, ``a << b`` only with a small constant (``b`` for powers and shifts):
    a program's value must not make the host's judge allocate or compute without bound."""
    if not isinstance(node, ast.BinOp):
        return True
    if isinstance(node.op, ast.Pow | ast.LShift):
        return _small(node.right)
    return not isinstance(node.op, ast.Mult) or _small(node.left) or _small(node.right)


def host_judgeable(test: SplitTest) -> bool:
    """True iff the judge is only asserts over literals, ``__v`` names, operators and SAFE_BUILTINS
    (and :func:`_bounded`)."""
    body = ast.parse(test.judge).body
    asserts = [stmt for stmt in body if isinstance(stmt, ast.Assert)]
    if len(asserts) != len(body):
        return False
    for stmt in asserts:
        for node in ast.walk(ast.Expression(stmt.test)):
            if not isinstance(node, _HOST_NODES) or not _bounded(node):
                return False
            if isinstance(node, ast.Name) and not (node.id.startswith("__v") or node.id in SAFE_BUILTINS):
                return False
            if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in SAFE_BUILTINS):
                return False
    return True


def judge_in_host(test: SplitTest, values: dict[str, Any]) -> bool:
    """Evaluate a :func:`host_judgeable` judge on the decoded values: True iff every assert holds."""
    namespace = {"__builtins__": SAFE_BUILTINS, **values}
    try:
        for stmt in ast.parse(test.judge).body:
            assert isinstance(stmt, ast.Assert)
            if not eval(compile(ast.Expression(stmt.test), "judge", "eval"), namespace):  # noqa: S307 - checked AST
                return False
    except Exception:  # noqa: BLE001 - any error of the comparison fails the test
        return False
    return True


_JUDGE = """import json
Any = object
_TAGS = {{"tuple": tuple, "set": set, "frozenset": frozenset, "iter": iter}}
{decoder}
_VALUES = {{k: decode_value(v) for k, v in json.loads({values!r}).items()}}
_TESTS = json.loads({tests!r})


def judge(k):
    exec(compile(_TESTS[k], f"test_{{k}}", "exec"), {{"__name__": "judge", **_VALUES}})
    return True
"""


def judge_in_sandbox(tests: list[tuple[SplitTest, dict[str, Any]]], limits: SandboxLimits,
                     python: str | None) -> list[bool]:
    """Run judges the host does not evaluate in a second, clean sandbox that holds only the tests
    and the program's (re-encoded) values: no program code runs there. True per test that passed."""
    values = {name: encode(v) for _, named in tests for name, v in named.items()}
    source = _JUDGE.format(decoder=inspect.getsource(decode_value), values=json.dumps(values),
                           tests=json.dumps([t.judge for t, _ in tests]))
    res = run_sandboxed(source, [f"judge({k})" for k in range(len(tests))], limits=limits, python=python)
    if res.bad_result or res.load_error:
        return [False] * len(tests)
    return [ok and value is True for ok, value in res.calls]


# ------------------------------------------------------------------ tests that call the program through proxies
@dataclass(frozen=True)
class ProxyTests:
    """A row's tests run unchanged in the judge's sandbox (:func:`~reward_models.sandbox.run_linked`):
    per test, the names it takes from the program (proxies) and the standard modules it names
    without importing them (imported in the judge, never the program's)."""

    tests: tuple[str, ...]
    names: tuple[tuple[str, ...], ...]
    imports: tuple[tuple[str, ...], ...]
    entry_point: str | None = None  #: always the program's, even where ``prefix`` defines it
    prefix: str = ""  #: trusted code (HumanEval's prompt) run in the judge before each test

    def spec(self) -> dict:
        return {"names": self.names, "imports": self.imports, "entry_point": self.entry_point, "prefix": self.prefix}


def free_names(tree: ast.Module) -> set[str]:
    """Names a test reads but never binds (assignment, def, class, import, argument, ``as``), builtins excluded."""
    bound, loaded = set(dir(builtins)), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return loaded - bound


def _with_check_call(source: str, tree: ast.Module, entry_point: str | None) -> str:
    """HumanEval's test defines ``check(candidate)`` and the harness calls it on the entry point: so here."""
    defines = any(isinstance(s, ast.FunctionDef) and s.name == "check" for s in tree.body)
    calls = any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "check"
                for s in tree.body if not isinstance(s, ast.FunctionDef) for n in ast.walk(s))
    if not defines or calls:
        return source
    if not entry_point or not entry_point.isidentifier():
        raise ValueError("defines check(candidate) but the row has no entry point to call it on")
    return f"{source}\n\ncheck({entry_point})\n"


def proxy_tests(tests: list[str], row: int, key: str, entry_point: str | None = None, prefix: str = "") -> ProxyTests:
    """The row's tests for the proxy path; ValueError names the row and test that is not valid Python."""
    sources, names, imports = [], [], []
    for j, test in enumerate(tests):
        try:
            source = _with_check_call(test, ast.parse(test), entry_point)
            free = free_names(ast.parse(source))
        except (SyntaxError, ValueError) as err:
            raise ValueError(f"CodeExecution: metadata row {row} {key!r} test {j}: "
                             f"{getattr(err, 'msg', None) or err}") from None
        stdlib = {name for name in free if name in sys.stdlib_module_names and name != entry_point}
        sources.append(source)
        names.append(tuple(sorted(free - stdlib)))
        imports.append(tuple(sorted(stdlib)))
    return ProxyTests(tuple(sources), tuple(names), tuple(imports), entry_point, prefix)
