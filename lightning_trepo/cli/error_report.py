"""The console script's short report of configuration and input errors.

The console script runs inside :func:`reporting_errors`, which turns configuration and input errors, however deeply
jsonargparse or Lightning wrapped them, into one short block; ``--debug`` or ``LIGHTNING_TREPO_DEBUG=1`` keeps the
full traceback, and genuine internal errors always keep it.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import os
import re
import sys
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from lightning_trepo.errors import ConfigError, InputError, TrainingHalted

DEBUG_ENV = "LIGHTNING_TREPO_DEBUG"
DEBUG_HINT = f"(full traceback: add --debug or set {DEBUG_ENV}=1)"


# ---------------------------------------------------------------------------------------------- schema of a class
def _hints(obj: type) -> dict[str, Any]:
    target = obj if dataclasses.is_dataclass(obj) else obj.__init__
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # an unresolvable annotation: no schema below this class
        return {}
    if dataclasses.is_dataclass(obj):
        return {f.name: hints.get(f.name) for f in dataclasses.fields(obj)}
    params = inspect.signature(obj.__init__).parameters
    return {
        n: hints.get(n) for n, p in params.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def _nested_class(hint: Any) -> type | None:
    """The dataclass a field holds (also inside ``X | None``), whose fields are nested keys."""
    for h in (hint, *typing.get_args(hint)):
        if isinstance(h, type) and dataclasses.is_dataclass(h):
            return h
    return None


def schema_keys(cls: type, prefix: str = "", depth: int = 0) -> list[str]:
    """Every dotted key a class accepts: its ``__init__`` parameters and, recursively, dataclass fields."""
    keys = []
    for name, hint in _hints(cls).items():
        key = f"{prefix}{name}"
        keys.append(key)
        nested = _nested_class(hint)
        if nested is not None and depth < 4:
            keys.extend(schema_keys(nested, key + ".", depth + 1))
    return keys


def _import(path: str) -> type | None:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------- what went wrong
def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ if exc.__cause__ is not None else None if exc.__suppress_context__ else exc.__context__
    return out


def _frames(tb: TracebackType | None) -> list[Any]:
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames


def _phase(exc: BaseException) -> str:
    """'config' when raised while parsing or instantiating the CLI's classes, else 'run'."""
    names = {f.f_code.co_name for e in _chain(exc) for f in _frames(e.__traceback__)}
    if "_run_subcommand" in names:
        return "run"
    return "config" if names & {"parse_arguments", "instantiate_classes", "_parse_ckpt_path"} else "run"


def _component(exc: BaseException) -> str | None:
    """Class whose ``__init__``/``__post_init__`` raised (innermost), e.g. SamplingConfig or OverlongPenalty."""
    for frame in reversed(_frames(exc.__traceback__)):
        if frame.f_code.co_name in ("__init__", "__post_init__") and "self" in frame.f_locals:
            return type(frame.f_locals["self"]).__name__
    return None


def _from_input_code(exc: BaseException) -> bool:
    """Raised by the project's data sources or reward layer about their inputs (not an internal bug)."""
    if not isinstance(exc, (ValueError, FileNotFoundError, KeyError)):
        return False
    files = [f.f_code.co_filename for f in _frames(exc.__traceback__)]
    return any(os.sep + "lightning_trepo" + os.sep + "data" + os.sep in f or os.sep + "reward_models" + os.sep in f
               for f in files[-2:])


UNKNOWN_PATTERNS = (r"unrecognized arguments: --([\w.]+)(?:[= ](\S+))?", r"Option '([\w.]+)' is not accepted()",
                    r"does not accept option '([\w.]+)'()", r'No action for key "([\w.]+)"()')
SECTIONS = {"data": "lightning_trepo.data.PromptDataModule", "trainer": "lightning.pytorch.Trainer"}


def _unrecognized(message: str) -> list[tuple[str, str]]:
    """(key, value) pairs of jsonargparse's several ways of saying a key does not exist."""
    return [pair for pattern in UNKNOWN_PATTERNS for pair in re.findall(pattern, message)]


def _useful_lines(message: str) -> list[str]:
    """The real complaints inside jsonargparse's Union messages: no subtype list, no namespace dump, no NoneType."""
    keep = []
    for line in message.splitlines():
        text = line.strip().lstrip("- ").strip()
        if not text or text.startswith(("Subtypes:", "Errors:", "Given value", "Does not validate against",
                                        "Expected a <class 'NoneType'>", "Problem with given class_path")):
            continue
        keep.append(text)
    return keep


def _model_class(message: str) -> type | None:
    match = re.search(r"class_path[=:]? ?'([\w.]+)'", message)
    return _import(match.group(1)) if match else None


def _unknown_context(message: str, key: str) -> tuple[str, type | None, str]:
    """(prefix of the full key, class whose schema holds the key, key relative to it) for an unknown key."""
    keys = re.findall(r'Parser key "([\w.]+)"', message)
    classes = re.findall(r"class_path '([\w.]+)'", message)
    if keys and len(classes) == len(keys):  # model -> GRPO, reward -> NumericAnswer, ...: each level has init_args
        return "".join(f"{k}.init_args." for k in keys), _import(classes[-1]), key
    section, _, rest = key.partition(".")
    if section in SECTIONS and rest:
        return f"{section}.", _import(SECTIONS[section]), rest
    return "", None, key


def _describe_unknown(chain: list[BaseException]) -> list[str] | None:
    for exc in chain:
        message = str(exc)
        pairs = _unrecognized(message)
        if pairs:
            break
    else:
        return None
    lines = []
    for key, value in pairs:
        prefix, cls, rel = _unknown_context(message, key)
        lines.append(f"unknown config key: {prefix}{rel}" + (f" (value {value})" if value else ""))
        known = schema_keys(cls) if cls is not None else []
        close = difflib.get_close_matches(rel, known, n=1, cutoff=0.6)
        if close:
            lines.append(f"  did you mean {prefix}{close[0]}?")
        elif known:
            lines.append(f"  {cls.__name__} accepts: {', '.join(sorted({k.split('.')[0] for k in known}))}")
    return lines[:8]


def _parser_key(message: str) -> str | None:
    """The full key of a parse error from jsonargparse's nested 'Parser key "..."' lines."""
    keys = re.findall(r'Parser key "([\w.]+)"', message)
    classes = re.findall(r"class_path '([\w.]+)'", message)  # each subclass level adds init_args
    return ".".join(f"{k}.init_args" if i < len(classes) else k for i, k in enumerate(keys)) or None


def _innermost_text(chain: list[BaseException]) -> str:
    """The deepest message that still says where (e.g. 'Invalid content in sub-config file X: <yaml error>')."""
    root = chain[-1]
    first = (str(root).splitlines() or [""])[0]
    for exc in reversed(chain[:-1]):
        text = str(exc).strip()
        if first in text and not text.startswith(("Parser key", "Problem with", "Does not validate", "-")):
            return text
    return str(root) or type(root).__name__


def _parse_problem(key: str, chain: list[BaseException]) -> list[str]:
    lines = _useful_lines(_innermost_text(chain))
    literal = re.match(r"Expected a typing\.Literal\[(.*)\]\. Got value: (.*)", lines[0])
    if literal:
        allowed = ", ".join(v.strip().strip("'") for v in literal.group(1).split(","))
        return [f"{key} = {literal.group(2)!r}", f"  accepted: one of {allowed}"]
    return [f"{key}: {lines[0]}", *(f"  {line}" for line in lines[1:])]


def _config_error_lines(err: ConfigError) -> list[str]:
    lines = [f"{err.key} = {err.value!r}"]
    if err.problem:
        lines.append(f"  {err.problem}")
    return [*lines, f"  accepted: {err.accepted}"]


HINTS = (
    ("enable_checkpointing=False", "trainer.callbacks lists a checkpoint callback: keep trainer.enable_checkpointing "
     "true, or leave the checkpoint callbacks out (the CLI drops the configs' own when checkpointing is off)"),
    ('"subcommand"', "e.g. lightning-trepo fit --config configs/grpo.yaml (lightning-trepo --help lists the commands)"),
    ("required: fit.model", "start from a shipped config: lightning-trepo fit --config configs/grpo.yaml"),
)


def _instantiation_problem(top: str, root: BaseException) -> list[str]:
    """A class raised while being built: its message, the key it concerns and the class."""
    cls = _model_class(top) or _model_class(str(root))
    lines = _useful_lines(str(root)) or [f"{type(root).__name__}: {root}"]
    lines += [f"  {hint}" for text, hint in HINTS if text in str(root)]
    component = _component(root)
    if component and component != getattr(cls, "__name__", None):
        lines.append(f"  raised by: {component}")
    return lines


def _checkpoint_problem(chain: list[BaseException]) -> str | None:
    """LightningCLI reads ``--ckpt_path`` while building the config; a bad file fails inside torch.load there."""
    for frame in (f for e in chain for f in _frames(e.__traceback__)):
        if frame.f_code.co_name == "_parse_ckpt_path" and frame.f_locals.get("ckpt_path"):
            from lightning_trepo.training.checkpoints import check_readable

            path = str(frame.f_locals["ckpt_path"])
            try:
                check_readable(path)
            except InputError as err:
                return str(err)
            return f"--ckpt_path {path!r} could not be read: {chain[-1]}"
    return None


def describe(exc: BaseException) -> list[str] | None:
    """A short report for a configuration or input error, or None for an internal error (keep the traceback)."""
    chain = _chain(exc)
    mine = next((e for e in chain if isinstance(e, (ConfigError, InputError, TrainingHalted))), None)
    if isinstance(mine, ConfigError):
        return _config_error_lines(mine)
    if mine is not None:
        return [str(mine)]
    top, root = str(chain[0]), chain[-1]
    ckpt = _checkpoint_problem(chain)
    if ckpt is not None:
        return [ckpt]
    unknown = _describe_unknown(chain)
    if unknown is not None:
        return unknown
    if _phase(exc) == "config":
        key = _parser_key(top)
        lines = _parse_problem(key, chain) if key else _instantiation_problem(top, root)
        return lines[:10]
    if _from_input_code(root):
        return [f"{type(root).__name__}: {root}"]
    return None


@contextmanager
def _parse_errors_raise() -> Iterator[None]:
    """jsonargparse prints a ~40-line usage before a parse error and exits; make it raise instead, so the error
    reaches :func:`describe` (the same as ``exit_on_error=False``, on every parser the CLI builds)."""
    from jsonargparse import ArgumentParser
    from jsonargparse._util import argument_error

    original = ArgumentParser.error

    def error(self: Any, message: str, ex: Exception | None = None) -> typing.NoReturn:
        raise argument_error(message) from ex

    ArgumentParser.error = error  # type: ignore[method-assign]
    try:
        yield
    finally:
        ArgumentParser.error = original  # type: ignore[method-assign]


def debug_requested(argv: list[str] | None) -> tuple[bool, list[str] | None]:
    """(debug on?, argv without ``--debug``); ``argv=None`` means ``sys.argv``, which is then edited in place."""
    given = sys.argv[1:] if argv is None else argv
    rest = [a for a in given if a != "--debug"]
    env = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    if argv is None:
        sys.argv[1:] = rest
    return env or len(rest) != len(given), None if argv is None else rest


@contextmanager
def reporting_errors(debug: bool) -> Iterator[None]:
    """Run the CLI; configuration/input errors become one short block on stderr and exit code 2 (configuration)
    or 1 (input at run time). Internal errors and ``debug`` re-raise with the full traceback."""
    with _parse_errors_raise():
        try:
            yield
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - classified below, re-raised when not a user error
            report = describe(exc)
            if debug or report is None:
                raise
            chain = _chain(exc)
            config = _phase(exc) == "config" or any(isinstance(e, ConfigError) for e in chain)
            halted = any(isinstance(e, TrainingHalted) for e in chain)
            kind = "training stopped" if halted else "configuration error" if config else "input error"
            sys.stderr.write(f"lightning-trepo: {kind}\n" + "".join(f"  {line}\n" for line in report)
                             + f"  {DEBUG_HINT}\n")
            sys.exit(2 if kind == "configuration error" else 1)
