"""What the terminal says while a session runs: preparation, progress of long cases, first result.

Why: a demo case on a laptop CPU takes tens of seconds and a fresh machine first builds
llama-server for minutes; a silent terminal looks hung. Lines go through pytest's terminal
reporter with output capture lifted (as live logging does), and -q silences all but the
preparation's start and end.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

#: a running case says where it is at most this often (and not at all when shorter)
EVERY_S = 10.0


class Terminal:
    def __init__(self, config: Any) -> None:
        self.reporter = config.pluginmanager.get_plugin("terminalreporter")
        self.capture = config.pluginmanager.get_plugin("capturemanager")
        self.verbosity = config.get_verbosity()

    @property
    def quiet(self) -> bool:
        return self.verbosity < 0

    def line(self, text: str, *, always: bool = False) -> None:
        """Write one line (under -q only when `always`)."""
        if self.reporter is None or (self.quiet and not always):
            return
        lifted = self.capture.global_and_fixture_disabled() if self.capture is not None else contextlib.nullcontext()
        with lifted:
            self.reporter.write_line(text)


class CaseProgress:
    """Called with (prompts done, total) as each measured conversation ends; says a line with
    the elapsed time when EVERY_S has passed since the case began or since its last line."""

    def __init__(self, say: Callable[[str], None], case_id: str, every: float = EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.say, self.case_id, self.every, self.clock = say, case_id, every, clock
        self.started = self.last = clock()

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self.say(f"speedbench: {self.case_id}: {done}/{total} prompts done, {now - self.started:.0f} s")


def minutes(seconds: float) -> str:
    """63.2 -> '1 min 3 s'; 9.4 -> '9.4 s'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"
