"""Tests that call the program through proxies: the sandbox side of both ends (stdlib only).

The host sends this file's source to two sandboxes joined by two pipes (reward_models/code_proxy.py):

- the **program's** sandbox loads the program as module ``solution`` and :func:`serve` answers
  requests: one JSON line each, ``{"op": "call" | "getattr" | "getitem", "ref": name | id, ...}``,
  answered by ``{"value": plain}``, ``{"ref": id}`` (an object that is not a plain value, kept there)
  or ``{"error": type name}``;
- the **judge's** sandbox runs the test unchanged (:func:`judge`), each program name bound to a
  :class:`Proxy` whose calls travel as JSON and whose results come back as plain values decoded by
  :func:`decode_value`: built-in types only, so no object of the program's reaches the test.

The program's process is the program's: it may answer anything, in any order, or nothing. Only
plain values (or opaque handles that refuse comparison, truth, hashing and iteration) come back,
a reply is read up to a byte cap, and a broken channel fails every later call.
"""
from __future__ import annotations

import builtins
import importlib
import json
import os
from typing import Any

_TAGS = {"tuple": tuple, "set": set, "frozenset": frozenset, "iter": iter}


def encode(value: Any, depth: int = 0) -> Any:
    """The boot's strict encoder (replaced by the boot's own function inside a sandbox)."""
    from reward_models._sandbox_boot import encode as boot_encode
    return boot_encode(value, depth)


def decode_value(data: Any) -> Any:
    """The plain value a sandbox sent (the boot's ``encode``): JSON scalars and lists as themselves;
    one-key objects ``{"tuple"|"set"|"frozenset"|"iter": [...]}``, ``{"dict": [[k, v], ...]}``,
    ``{"bytes": hex}``, ``{"complex": [re, im]}``, ``{"range": [a, b, c]}``. Anything else raises
    ValueError or TypeError: only built-in types come out, so no ``__eq__`` of the program's."""
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is list:
        return [decode_value(v) for v in data]
    if type(data) is not dict or len(data) != 1:
        raise ValueError(f"not a tagged value: {str(data)[:60]}")
    (tag, body), = data.items()
    if tag in _TAGS and type(body) is list:
        return _TAGS[tag]([decode_value(v) for v in body])
    if tag == "dict" and type(body) is list and all(type(p) is list and len(p) == 2 for p in body):
        return {decode_value(k): decode_value(v) for k, v in body}
    if tag == "bytes" and type(body) is str:
        return bytes.fromhex(body)
    if tag == "complex" and type(body) is list and all(type(v) in (int, float) for v in body):
        return complex(*body)
    if tag == "range" and type(body) is list and all(type(v) is int for v in body) and len(range(*body)) <= 1 << 16:
        return range(*body)  # bounded: list(value) in a judge must not exhaust the host
    raise ValueError(f"bad tagged value {tag!r}")


# ----------------------------------------------------------------------------- the program's side
def _resolve(ref: Any, namespace: dict, objects: list) -> Any:
    if type(ref) is str:
        if ref not in namespace:
            raise NameError(ref)
        return namespace[ref]
    return objects[ref]


def _argument(data: Any, namespace: dict, objects: list) -> Any:
    if type(data) is dict and set(data) == {"ref"}:
        return _resolve(data["ref"], namespace, objects)
    return decode_value(data)


def _answer(request: dict, namespace: dict, objects: list) -> dict:
    """Perform one request; a result that is not a plain value stays here as a handle."""
    target = _resolve(request["ref"], namespace, objects)
    if request["op"] == "call":
        args = [_argument(a, namespace, objects) for a in request["args"]]
        kwargs = {k: _argument(v, namespace, objects) for k, v in request["kwargs"]}
        value = target(*args, **kwargs)
    elif request["op"] == "getattr":
        value = getattr(target, request["name"])
    else:
        value = target[_argument(request["key"], namespace, objects)]
    try:
        return {"value": encode(value)}
    except (TypeError, ValueError):
        objects.append(value)
        return {"ref": len(objects) - 1}


def serve(program: str, calls: Any, results: int, channel: list[int], spec: dict) -> None:
    """Load the program as module ``solution`` (``{"load": ...}`` on the results file), then answer
    requests from ``channel[0]`` on ``channel[1]`` until the judge closes its end."""
    namespace: dict = {"__name__": "solution"}
    try:
        exec(compile(program, "solution.py", "exec"), namespace)
    except BaseException as err:  # noqa: BLE001 - a failing program fails every call
        os.write(results, json.dumps({"load": type(err).__name__}).encode() + b"\n")
        return
    os.write(results, b'{"load": null}\n')
    objects: list = []
    with os.fdopen(channel[0], "rb") as requests:
        for line in requests:
            try:
                text = json.dumps(_answer(json.loads(line), namespace, objects))
            except BaseException as err:  # noqa: BLE001 - the call failed: the judge raises
                text = json.dumps({"error": type(err).__name__})
            os.write(channel[1], text.encode() + b"\n")


# ----------------------------------------------------------------------------- the judge's side
class ProgramError(Exception):
    """A call into the program failed: it raised an exception that is not a plain built-in one, or
    its reply was malformed, over the cap, or never came."""


#: exceptions a failing call re-raises by name; StopIteration is not one (it would end a test's map() early)
RAISABLE = {name: cls for name, cls in vars(builtins).items() if isinstance(cls, type) and issubclass(cls, Exception)
            and not issubclass(cls, StopIteration | StopAsyncIteration)}


class Link:
    """The judge's end of the channel: one request line out, one reply line in (at most ``cap`` bytes)."""

    def __init__(self, read_fd: int, write_fd: int, cap: int) -> None:
        self.read_fd, self.write_fd, self.cap, self.buffer, self.broken = read_fd, write_fd, cap, b"", ""

    def _line(self) -> bytes:
        while b"\n" not in self.buffer:
            if len(self.buffer) > self.cap:
                raise ProgramError("reply over the byte cap")
            chunk = os.read(self.read_fd, 1 << 16)
            if not chunk:
                raise ProgramError("the program's sandbox closed the channel")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        if len(line) > self.cap:
            raise ProgramError("reply over the byte cap")
        return line

    def _reply(self, line: bytes) -> tuple[Any, BaseException | None]:
        """(value, None) or (None, the exception the call raises); ValueError if malformed."""
        reply = json.loads(line)
        if type(reply) is not dict or len(reply) != 1:
            raise ValueError("not a one-key object")
        (kind, body), = reply.items()
        if kind == "value":
            return decode_value(body), None
        if kind == "ref" and type(body) is int:
            return Proxy(body, self), None
        if kind == "error" and type(body) is str:
            try:
                return None, RAISABLE.get(body, ProgramError)(f"the program raised {body[:80]}")
            except Exception:  # noqa: BLE001 - an exception class that needs other arguments
                return None, ProgramError(f"the program raised {body[:80]}")
        raise ValueError(f"unknown reply {kind[:20]!r}")

    def request(self, message: dict) -> Any:
        """Send one request and return the decoded reply; protocol failures break the link for good."""
        if self.broken:
            raise ProgramError(self.broken)
        try:
            data = json.dumps(message).encode() + b"\n"
            os.write(self.write_fd, data)  # requests are small: one write, no partial line
            line = self._line()
        except ProgramError as err:
            self.broken = str(err)
            raise
        except OSError as err:
            self.broken = f"channel: {type(err).__name__}"
            raise ProgramError(self.broken) from None
        try:
            value, error = self._reply(line)
        except (ValueError, TypeError, RecursionError, OverflowError, MemoryError) as err:
            self.broken = f"malformed reply ({type(err).__name__})"
            raise ProgramError(self.broken) from None
        if error is not None:
            raise error
        return value

    def wire(self, value: Any) -> Any:
        """An argument as JSON: a proxy as its handle, anything else through the strict encoder."""
        if type(value) is Proxy:
            return {"ref": object.__getattribute__(value, "_ref")}
        return encode(value)


def _refuse(self: Any, *args: Any) -> Any:
    raise TypeError("a program object is not a plain value: compare what it returns")


class Proxy:
    """A program name or object, in the judge. Calls, attributes and items are requests to the
    program's sandbox; comparison, truth, hashing, iteration, length and membership raise TypeError
    (the program's object never answers them, so an always-equal object passes nothing)."""

    __slots__ = ("_link", "_ref")

    def __init__(self, ref: str | int, link: Link) -> None:
        object.__setattr__(self, "_ref", ref)
        object.__setattr__(self, "_link", link)

    def _ask(self, op: str, **fields: Any) -> Any:
        link = object.__getattribute__(self, "_link")
        return link.request({"op": op, "ref": object.__getattribute__(self, "_ref"), **fields})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._ask("getattr", name=name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        link = object.__getattribute__(self, "_link")
        wired = [[k, link.wire(v)] for k, v in kwargs.items()]
        return self._ask("call", args=[link.wire(a) for a in args], kwargs=wired)

    def __getitem__(self, key: Any) -> Any:
        return self._ask("getitem", key=object.__getattribute__(self, "_link").wire(key))

    def __repr__(self) -> str:
        return "<program object>"

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _refuse  # type: ignore[assignment]
    __bool__ = __len__ = __iter__ = __contains__ = __hash__ = __setattr__ = __delattr__ = _refuse  # type: ignore


def _namespace(spec: dict, k: int, link: Link) -> dict:
    """The test's globals: the trusted prefix, the standard modules it names, a proxy per program name."""
    namespace: dict = {"__name__": "__main__"}  # the test is the script: its `if __name__ == "__main__":` runs
    if spec["prefix"]:
        exec(compile(spec["prefix"], "prefix.py", "exec"), namespace)
    for module in spec["imports"][k]:
        namespace.setdefault(module, importlib.import_module(module))
    for name in spec["names"][k]:
        if name not in namespace or name == spec["entry_point"]:
            namespace[name] = Proxy(name, link)
    return namespace


def judge(program: Any, tests: list[str], results: int, channel: list[int], spec: dict) -> None:
    """Run each test unchanged in its own namespace; one result line per test (``true`` = passed)."""
    link = Link(channel[0], channel[1], spec["cap"])
    os.write(results, b'{"load": null}\n')
    for k, test in enumerate(tests):
        try:
            exec(compile(test, f"test_{k}", "exec"), _namespace(spec, k, link))
            text = '{"value": true}'
        except BaseException as err:  # noqa: BLE001 - any failure of the test fails it
            text = json.dumps({"error": type(err).__name__})
        os.write(results, text.encode() + b"\n")
