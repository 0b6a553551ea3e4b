"""Errors a person can act on: configuration checks that name the key, and input files that do not fit.

``ConfigError`` is what every construction-time check raises (key, bad value, what is accepted); every cross-field
check goes through :func:`require`, so the key at fault is always stated, never guessed. The console script's short
report of these errors is :mod:`lightning_trepo.cli.error_report`.
"""
from __future__ import annotations

import typing
from typing import Any


class ConfigError(ValueError):
    """A setting is invalid: ``key`` (dotted, as in the YAML), the bad ``value`` and what is ``accepted``."""

    def __init__(
        self, key: str, value: Any, accepted: str, problem: str = "", section: str = "model.init_args"
    ) -> None:
        self.key = f"{section}.{key}" if section else key
        self.value, self.accepted, self.problem = value, accepted, problem
        text = f"{self.key} = {value!r}: {problem + '; ' if problem else ''}accepted: {accepted}"
        super().__init__(text)


class MissingPathError(ConfigError, FileNotFoundError):
    """A configured path (model directory, GGUF file, package) is not there: a :class:`ConfigError` naming the key
    that is also a ``FileNotFoundError``."""


class InputError(ValueError):
    """A file the run reads (checkpoint, data) is missing, truncated or does not fit the configuration."""


class TrainingHalted(RuntimeError):
    """Training stopped on purpose (e.g. too many non-finite updates in a row); the message says why and what next."""


def choices(literal: Any) -> tuple[Any, ...]:
    """The values of a ``Literal[...]`` type."""
    return typing.get_args(literal)


def check_choice(key: str, value: Any, literal: Any, section: str = "model.init_args") -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of the ``Literal`` type's values (for direct Python use;
    the CLI already rejects it at parse time)."""
    allowed = choices(literal)
    if value not in allowed:
        raise ConfigError(key, value, "one of " + ", ".join(map(str, allowed)), section=section)


def require(ok: bool, key: str, value: Any, accepted: str, problem: str = "", section: str = "model.init_args",
            error: type[ConfigError] = ConfigError) -> None:
    """Raise :class:`ConfigError` (or the subclass ``error``, e.g. :class:`MissingPathError`) for ``key`` when ``ok``
    is false."""
    if not ok:
        raise error(key, value, accepted, problem, section=section)
