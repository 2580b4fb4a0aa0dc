"""What the terminal says while a session runs: preparation, progress of long cases, first result.

Why: a demo case on a laptop CPU takes tens of seconds and a fresh machine first builds
llama-server for minutes; a silent terminal looks hung. Lines go through pytest's terminal
reporter with output capture lifted (as live logging does), and -q silences all but the
preparation's start and end.
"""

from __future__ import annotations

import contextlib
import threading
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
        """Write one line (under -q only when `always`) and flush it: when stdout is not a
        terminal (tox, CI logs) Python holds output back in a block buffer otherwise, and a log
        stays silent for the whole case."""
        if self.reporter is None or (self.quiet and not always):
            return
        lifted = self.capture.global_and_fixture_disabled() if self.capture is not None else contextlib.nullcontext()
        with _WRITE_LOCK, lifted:  # the heartbeat thread writes too
            self.reporter.write_line(text)
            self.reporter.flush()


#: one writer at a time: the case's heartbeat thread and the main thread share the terminal
_WRITE_LOCK = threading.Lock()


class CaseProgress:
    """Where a running case is: told (prompts done, total) as each measured conversation ends,
    shown the requests as they start (`track`), and ticked by a `Heartbeat` thread. Says a line
    with prompts done, tokens streamed so far and the elapsed time when EVERY_S has passed since
    the case began or since its last line, so a slow first prompt is not a silent minute."""

    def __init__(self, say: Callable[[str], None], case_id: str, every: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.say, self.case_id, self.clock = say, case_id, clock
        self.every = EVERY_S if every is None else every
        self.started = self.last = clock()
        self.done, self.total = 0, 0
        self.records: list[Any] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        """The case's first request is about to go out: its time starts now (preparing its
        prompts, which has its own lines, is not case time)."""
        self.started = self.last = self.clock()

    def __call__(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        self.tick()

    def track(self, record: Any) -> None:
        """A measured request has started: its tokens count as streamed from now on."""
        self.records.append(record)

    def part(self, index: int, parts: int) -> Callable[[int, int], None]:
        """The progress of pass `index` of `parts` equal passes (interleaved rounds), as one count."""
        def step(done: int, total: int) -> None:
            self(index * total + done, parts * total)

        step.track = self.track  # type: ignore[attr-defined]
        return step

    def tokens(self) -> int:
        """Tokens streamed so far by the tracked requests (in-process engines count as they
        stream; HTTP streams are parsed when they end)."""
        return sum(sum(r.chunk_tokens) for r in list(self.records))

    def tick(self) -> None:
        with self._lock:
            now = self.clock()
            if now - self.last < self.every:
                return
            self.last = now
        if not self.records and not self.done:
            where = "preparing (prompts, engine state, warmup)"
        else:
            where = f"{self.done}/{self.total} prompts done, {self.tokens()} tokens streamed"
        self.say(f"speedbench: {self.case_id}: {where}, {now - self.started:.0f} s")


class Heartbeat:
    """A daemon thread that ticks a CaseProgress every second while a case runs (a context
    manager), so lines come every EVERY_S even before the first prompt finishes."""

    def __init__(self, progress: CaseProgress, interval: float = 1.0) -> None:
        self.progress, self.interval = progress, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="speedbench-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.progress.tick()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def minutes(seconds: float) -> str:
    """63.2 -> '1 min 3 s'; 9.4 -> '9.4 s'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"
