"""Exception types shared by every layer, so the plugin can tell a usage error from a fault."""

from __future__ import annotations

from collections.abc import Iterable


class SpeedbenchError(Exception):
    """Base class for every error raised on purpose by pytest-speedbench."""


class UsageError(SpeedbenchError):
    """Bad user input (options, config file, dataset path): stops the session with a clear message."""


class EngineError(SpeedbenchError):
    """The engine misbehaved (crashed, never became ready, sent garbage): fails the affected test."""

    def __init__(self, message: str, log_tail: str | None = None) -> None:
        if log_tail:
            message = f"{message}\n--- engine log tail ---\n{log_tail.rstrip()}"
        super().__init__(message)
        self.log_tail = log_tail


class EngineNotInstalled(UsageError):
    """The engine's package or executable is missing; the message carries the install hint."""


class RequestError(SpeedbenchError):
    """One request failed (HTTP error, timeout, malformed event); recorded on the request."""


def bad_value(what: str, value: object, valid: Iterable[object]) -> UsageError:
    """A UsageError that names the bad value and every valid one, plus a did-you-mean when a
    valid value is close (a typo: 'codign' -> 'coding')."""
    import difflib

    choices = [str(v) for v in valid]
    close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return UsageError(f"unknown {what} {value!r}; valid values: {', '.join(choices)}{hint}")
