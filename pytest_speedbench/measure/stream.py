"""One request -> one record, and the client's self-measurement: the part of the load loop
that the in-process client (client.py) and the sharded workers (sharding.py) share.

Both paths must measure identically, so the send-time stamp, the stream, the parse after the
latency window, the error capture, and the CPU / event-loop-lag accounting live here once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pytest_speedbench.engines.base import HttpRequest, StreamParser
from pytest_speedbench.errors import RequestError
from pytest_speedbench.measure.records import RequestRecord
from pytest_speedbench.measure.transport import StreamResult, StreamTransport


def records_from_stream(result: StreamResult, parser: StreamParser, record: RequestRecord) -> None:
    """Parse a finished stream's raw events into the record (after the latency window)."""
    finished = False
    for t, data in result.events:
        event = parser.parse(data)
        if event is None:
            continue
        if event.new_token_ids:
            record.chunk_times.append(t)
            record.chunk_tokens.append(len(event.new_token_ids))
            record.output_ids.extend(event.new_token_ids)
        if event.counters is not None:
            record.counters = event.counters
        finished = finished or event.finished
    if not finished and not result.done:
        raise RequestError(
            f"stream ended without a final event or [DONE] after {len(record.chunk_tokens)} token chunks"
        )


async def stream_request(
    transport: StreamTransport, request: HttpRequest, parser: StreamParser, record: RequestRecord,
    idle_timeout: float,
) -> int:
    """Send one request, stamp its send time, stream and parse it into `record`; returns the
    number of raw events. A RequestError becomes `record.error`, so one bad stream fails one record."""
    record.t_send = time.perf_counter()
    try:
        result = await transport.stream(request, idle_timeout)
    except RequestError as exc:
        record.error = str(exc)
        return 0
    try:
        records_from_stream(result, parser, record)
    except RequestError as exc:
        record.error = str(exc)
    return len(result.events)


class LagMonitor:
    """Measures how late the event loop wakes up: the client's own delay on every timestamp.

    Every `interval` it sleeps and records how much later than asked it woke up: a callback
    ready at that moment (a socket read, whose receipt stamp is a latency's end) waited as
    long. Its own wake-ups cost CPU too (`ClientMeter` takes them out of the client's CPU).
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.lags: list[float] = []
        #: process CPU seconds between consecutive wake-ups (the wake-up and whatever else ran)
        self.cpu: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self, count: int | None = None) -> None:
        perf, cpu = time.perf_counter, time.process_time
        last = cpu()
        while count is None or len(self.lags) < count:
            start = perf()
            await asyncio.sleep(self.interval)
            self.lags.append(perf() - start - self.interval)
            now = cpu()
            self.cpu.append(now - last)
            last = now

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> dict[str, float | int | None]:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        lags = sorted(self.lags)
        if not lags:
            return {"loop_lag_samples": 0, "loop_lag_mean_s": None, "loop_lag_p50_s": None, "loop_lag_p99_s": None,
                    "loop_lag_max_s": None}
        return {
            "loop_lag_samples": len(lags),
            "loop_lag_mean_s": sum(lags) / len(lags),
            "loop_lag_p50_s": lags[len(lags) // 2],
            "loop_lag_p99_s": lags[min(len(lags) - 1, int(len(lags) * 0.99))],
            "loop_lag_max_s": lags[-1],
        }


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0.0


async def wakeup_cpu_s(interval: float, samples: int = 20) -> float:
    """Process CPU seconds of one monitor wake-up on this loop with nothing else to do: a
    LagMonitor run for `samples` wake-ups, once the measured streams are over. It must use the
    monitor's own interval: waking an idle process costs more the longer it slept (on the
    2-core VM, per wake-up: ~6 us after 0.5 ms, ~60 us after 2 ms, ~100 us after 5 ms)."""
    probe = LagMonitor(interval)
    await probe._run(samples)
    return _median(probe.cpu)


class ClientMeter:
    """The client's cost over the measured window: loop lag, process CPU time, raw events.

    `start()` inside the running loop, `count(n)` per stream, `await stop()` for the figures
    {loop_lag_*, cpu_s, monitor_cpu_s, events}. `cpu_s` leaves out the lag monitor's own
    wake-ups (one per 5 ms, ~100 us each from idle: at one stream of ~36 ms events they were
    most of the ~910 us per event reported): `monitor_cpu_s` = wake-ups x the CPU of one
    wake-up: the median process CPU between the run's own consecutive wake-ups, capped by the
    median of 20 idle wake-ups on the same loop right after the window (`wakeup_cpu_s`, +0.1 s
    per run). Where the probe is most of the CPU (sparse events on a loaded machine) the
    figure left is small and noisy: the client is cheap there anyway.
    """

    def __init__(self, lag_interval: float = 0.005) -> None:
        self.monitor = LagMonitor(lag_interval)
        self.events = 0
        self._cpu0 = 0.0

    def start(self) -> None:
        self.events = 0
        self._cpu0 = time.process_time()
        self.monitor.start()

    def count(self, events: int) -> None:
        self.events += events

    async def stop(self) -> dict[str, Any]:
        lag = await self.monitor.stop()
        cpu = time.process_time() - self._cpu0
        wakeups = int(lag["loop_lag_samples"] or 0)
        monitor = 0.0
        if wakeups:
            # one wake-up: the median interval of the run itself (mostly idle ones when events are
            # sparse, where the probe's share is largest), never more than one idle wake-up
            # measured right after (when events are dense, the median interval holds events too)
            per_wakeup = min(_median(self.monitor.cpu), await wakeup_cpu_s(self.monitor.interval))
            monitor = min(cpu, wakeups * per_wakeup)
        return {**lag, "cpu_s": cpu - monitor, "monitor_cpu_s": monitor, "events": self.events}


def cpu_per_event(cpu_s: float, events: int) -> float | None:
    """Client CPU microseconds per raw event (the hot path's cost)."""
    return cpu_s / events * 1e6 if events else None


def asyncio_run(coro: Any) -> Any:
    """asyncio.run on uvloop when it is installed (cheaper per event)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return _run_reraising_signal_errors(runner, coro)


def _run_reraising_signal_errors(runner: asyncio.Runner, coro: Any) -> Any:
    """uvloop logs and swallows an exception raised by a Python signal handler (pytest-timeout's
    signal method raises one on SIGALRM), so a hung request would never be interrupted. Such an
    exception that is not an ordinary Exception (pytest outcomes) stops the run and is re-raised."""
    loop = runner.get_loop()
    task = loop.create_task(coro)
    fatal: list[BaseException] = []

    def handler(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, BaseException) and not isinstance(exc, Exception):
            fatal.append(exc)
            task.cancel()
            return
        lp.default_exception_handler(context)

    loop.set_exception_handler(handler)
    try:
        return loop.run_until_complete(task)
    except asyncio.CancelledError:
        if fatal:
            raise fatal[0] from None
        raise
