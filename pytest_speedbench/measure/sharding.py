"""Spread one run's streams over worker processes, each with its own event loop.

One Python process handles a few tens of thousands of SSE events per second before its own
event-loop delay shows up in the latencies it reports (docs/client-performance.md). Above a
measured number of concurrent streams the client therefore starts worker processes (spawn,
so no engine state or threads are inherited). Every worker stamps `time.perf_counter()`,
which on Linux is CLOCK_MONOTONIC, one clock for the whole host (`clock_is_shared` checks it),
so the parent merges the records as they are and the output-TPS window stays global.

Closed loop: exactly batch-size requests stay in flight overall: the concurrency is split into
per-worker slot counts that add up to the batch size, and every slot takes its next request
from one shared counter, so no worker idles while another still has a backlog.

Open loop (--request-rate): the parent computes the arrival schedule once (the same seed gives
the same schedule whatever the worker count) and deals it out round-robin by arrival index;
every worker sends its requests at their absolute times on the shared clock, and one shared
in-flight counter caps the run at batch-size (measure/schedule.py `SharedCap`).
"""

from __future__ import annotations

import asyncio
import copy
import math
import multiprocessing as mp
import os
import pickle
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pytest_speedbench.engines.base import HttpRequest
from pytest_speedbench.errors import SpeedbenchError
from pytest_speedbench.measure.records import RequestRecord
from pytest_speedbench.measure.schedule import SharedCap, keep_schedule
from pytest_speedbench.measure.stream import ClientMeter, asyncio_run, cpu_per_event, stream_request
from pytest_speedbench.measure.transport import StreamTransport

#: streams one process serves before sharding pays off (see docs/client-performance.md:
#: at ~25 us per event and 20 ms steps, 256 streams keep one core about 30% busy)
STREAMS_PER_PROCESS = 256

#: open-loop requests one process sends per second on schedule (docs/request-rate.md: on the
#: 2-core VM one process kept 256/s of 16-event streams, send lag p99 6-23 ms, and fell
#: behind at 1024/s, where ~330 streams were in flight)
SENDS_PER_PROCESS = 256

#: open loop: the first request is due this long after the start signal, so every worker is
#: running its event loop by then
OPEN_LOOP_LEAD_S = 0.1


@dataclass(frozen=True)
class ShardPlan:
    workers: int
    reason: str

    @property
    def sharded(self) -> bool:
        return self.workers > 1


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def plan_shards(
    batch_size: int,
    requested: int | None = None,
    *,
    cpus: int | None = None,
    streams_per_process: int = STREAMS_PER_PROCESS,
) -> ShardPlan:
    """How many worker processes to use: `requested` when given (1 = never), else by load.

    Automatic sharding starts above `streams_per_process` concurrent streams, uses at most one
    worker per usable CPU, and never more workers than streams.
    """
    if requested is not None:
        if requested < 1:
            raise SpeedbenchError(f"client shards must be at least 1, got {requested}")
        workers = min(requested, batch_size)
        return ShardPlan(workers, f"requested {requested} shard(s)")
    cpus = usable_cpus() if cpus is None else cpus
    if batch_size <= streams_per_process:
        return ShardPlan(1, f"{batch_size} streams <= {streams_per_process} per process")
    if cpus < 2:
        return ShardPlan(1, f"{batch_size} streams but only {cpus} usable CPU")
    workers = min(cpus, math.ceil(batch_size / streams_per_process))
    return ShardPlan(workers, f"{batch_size} streams > {streams_per_process} per process on {cpus} CPUs")


def plan_open_shards(
    request_rate: float,
    batch_size: int,
    requested: int | None = None,
    *,
    cpus: int | None = None,
    sends_per_process: int = SENDS_PER_PROCESS,
    streams_per_process: int = STREAMS_PER_PROCESS,
) -> ShardPlan:
    """Open loop: `requested` when given, else enough workers for the rate (`sends_per_process`
    each) and for the cap's worst-case streams (as `plan_shards`), at most one per usable CPU.
    rate = inf sends batch-size at once and then as slots free: the closed-loop rule."""
    streams = plan_shards(batch_size, requested, cpus=cpus, streams_per_process=streams_per_process)
    if requested is not None or math.isinf(request_rate):
        return streams
    cpus = usable_cpus() if cpus is None else cpus
    by_rate = math.ceil(request_rate / sends_per_process)
    if by_rate <= 1:
        return streams
    if cpus < 2:
        return ShardPlan(1, f"{request_rate:g} req/s but only {cpus} usable CPU")
    workers = min(cpus, max(by_rate, streams.workers))
    return ShardPlan(workers, f"{request_rate:g} req/s > {sends_per_process} per process on {cpus} CPUs")


def split_slots(batch_size: int, workers: int) -> list[int]:
    """Per-worker concurrency adding up to batch_size, as even as possible."""
    base, extra = divmod(batch_size, workers)
    return [base + (1 if i < extra else 0) for i in range(workers)]


def clock_is_shared(timeout: float = 30.0) -> bool:
    """True when a spawned process's perf_counter lies between two readings of ours."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    before = time.perf_counter()
    proc = ctx.Process(target=_report_clock, args=(child,))
    proc.start()
    try:
        if not parent.poll(timeout):
            return False
        theirs = parent.recv()
    finally:
        proc.join(timeout)
    after = time.perf_counter()
    return before <= theirs <= after


def _report_clock(conn: Any) -> None:
    conn.send(time.perf_counter())
    conn.close()


@dataclass
class ShardJob:
    """What one worker needs: everything picklable, no engine object."""

    index: int
    base_url: str
    transport: str
    slots: int
    requests: list[HttpRequest]
    labels: list[tuple[str, str]]  # (prompt_id, category) per request
    parser_blob: bytes  # pickled fresh parser, copied per request
    idle_timeout: float
    lag_interval: float
    #: open loop: (request index, offset s) pairs this worker sends; None = closed loop
    schedule: list[tuple[int, float]] | None = None


def parser_blob(parser: Any) -> bytes | None:
    """The engine's fresh parser pickled for the workers, or None when it cannot travel."""
    try:
        blob = pickle.dumps(parser)
        copy.deepcopy(pickle.loads(blob))
    except Exception:
        return None
    return blob


def run_sharded(
    jobs_input: dict[str, Any],
    plan: ShardPlan,
    before_start: Any = None,
    *,
    start_timeout: float = 120.0,
) -> tuple[list[RequestRecord], dict[str, Any]]:
    """Run the requests over `plan.workers` processes; returns (records, client_info).

    `jobs_input` holds base_url, transport, requests, labels, parser_blob, idle_timeout,
    batch_size, lag_interval, and for an open loop `offsets` (each request's arrival offset).
    `before_start()` runs once every worker is up and waiting (the engine-counter snapshot goes
    there), right before the shared start signal.
    """
    ctx = mp.get_context("spawn")
    counter = ctx.Value("q", 0)  # closed loop: the next request; open loop: requests in flight
    t0 = ctx.Value("d", 0.0)  # open loop: the perf_counter time offset 0 is due at
    start = ctx.Event()
    offsets = jobs_input.get("offsets")
    if offsets is None:
        slots = split_slots(jobs_input["batch_size"], plan.workers)
        schedules: list[list[tuple[int, float]] | None] = [None] * plan.workers
    else:  # every worker may use the whole cap; the shared counter holds it overall
        slots = [jobs_input["batch_size"]] * plan.workers
        schedules = [list(enumerate(offsets))[i::plan.workers] for i in range(plan.workers)]
    procs = []
    pipes = []
    for i, n in enumerate(slots):
        job = ShardJob(
            i, jobs_input["base_url"], jobs_input["transport"], n, jobs_input["requests"], jobs_input["labels"],
            jobs_input["parser_blob"], jobs_input["idle_timeout"], jobs_input.get("lag_interval", 0.005),
            schedules[i],
        )
        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(target=_worker_entry, args=(job, counter, t0, start, child_end), daemon=True,
                           name=f"speedbench-shard-{i}")
        proc.start()
        child_end.close()
        procs.append(proc)
        pipes.append(parent_end)
    try:
        for i, pipe in enumerate(pipes):
            if not pipe.poll(start_timeout):
                raise SpeedbenchError(f"client shard {i} did not start within {start_timeout:g} s")
            kind, payload = pipe.recv()
            if kind != "ready":
                raise SpeedbenchError(f"client shard {i} failed to start:\n{payload}")
        if before_start is not None:
            before_start()
        t0.value = time.perf_counter() + OPEN_LOOP_LEAD_S
        start.set()
        records: list[RequestRecord] = []
        shards: list[dict[str, Any]] = []
        for i, pipe in enumerate(pipes):
            try:
                kind, payload = pipe.recv()
            except EOFError:
                raise SpeedbenchError(
                    f"client shard {i} died (exit code {procs[i].exitcode}) before returning its records"
                ) from None
            if kind != "done":
                raise SpeedbenchError(f"client shard {i} failed:\n{payload}")
            shard_records, info = payload
            records.extend(shard_records)
            shards.append(info)
    finally:
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    info = merge_shard_info(shards, plan)
    if offsets is not None:
        info["shard_cap"] = f"{jobs_input['batch_size']} in flight over all workers (one shared counter)"
    return records, info


def merge_shard_info(shards: list[dict[str, Any]], plan: ShardPlan) -> dict[str, Any]:
    """Run-level client diagnostics from the workers': the worst loop lag, summed CPU."""
    def worst(key: str) -> float | None:
        values = [s[key] for s in shards if s.get(key) is not None]
        return max(values) if values else None

    cpu = sum(s["cpu_s"] for s in shards)
    events = sum(s["events"] for s in shards)
    return {
        "sharded": plan.sharded,
        "shards": len(shards),
        "shard_reason": plan.reason,
        "shard_slots": [s["slots"] for s in shards],
        "shard_requests": [s["requests"] for s in shards],
        "loop_lag_samples": sum(s.get("loop_lag_samples") or 0 for s in shards),
        "loop_lag_mean_s": worst("loop_lag_mean_s"),
        "loop_lag_p50_s": worst("loop_lag_p50_s"),
        "loop_lag_p99_s": worst("loop_lag_p99_s"),
        "loop_lag_max_s": worst("loop_lag_max_s"),
        "loop_lag_p99_by_shard_s": [s.get("loop_lag_p99_s") for s in shards],
        "client_cpu_s": cpu,
        "client_events": events,
        "client_cpu_us_per_event": cpu_per_event(cpu, events),
        "client_monitor_cpu_s": sum(s.get("monitor_cpu_s") or 0.0 for s in shards),
    }


def _worker_entry(job: ShardJob, counter: Any, t0: Any, start: Any, conn: Any) -> None:
    try:
        conn.send(("ready", None))
        start.wait()
        result = asyncio_run(_worker_main(job, counter, t0.value))
        conn.send(("done", result))
    except BaseException:
        try:
            conn.send(("error", traceback.format_exc()))
        except Exception:  # pragma: no cover - parent gone
            pass
    finally:
        conn.close()


async def _worker_main(job: ShardJob, counter: Any, t0: float) -> tuple[list[RequestRecord], dict[str, Any]]:
    """One worker's requests, each streamed through `stream.stream_request`, the same
    one-request loop as the in-process client. Closed loop: each slot takes the next request
    from the shared counter. Open loop: its share of the schedule, sent at t0 + offset under the
    shared in-flight cap (`counter`) by the in-process client's dispatcher."""
    total = len(job.requests)
    prototype = pickle.loads(job.parser_blob)
    records: list[RequestRecord] = []
    meter = ClientMeter(job.lag_interval)

    def take() -> int:
        with counter.get_lock():
            i = counter.value
            counter.value = i + 1
        return i

    async with StreamTransport(job.base_url, kind=job.transport) as transport:

        async def send(i: int, due: float | None = None, slot_free: float | None = None) -> None:
            prompt_id, category = job.labels[i]
            record = RequestRecord(prompt_id, category, 0, t_scheduled=due, t_slot=slot_free)
            meter.count(await stream_request(transport, job.requests[i], copy.deepcopy(prototype), record,
                                             job.idle_timeout))
            records.append(record)

        async def slot() -> None:
            while (i := take()) < total:
                await send(i)

        meter.start()
        if job.schedule is None:
            await asyncio.gather(*(slot() for _ in range(job.slots)))
        else:
            mine = job.schedule
            await keep_schedule([t0 + offset for _, offset in mine], SharedCap(counter, job.slots),
                                lambda k, due, free: send(mine[k][0], due, free))
        used = await meter.stop()
    info = {"index": job.index, "slots": job.slots, "requests": len(records), **used}
    return records, info


def build_jobs_input(
    base_url: str,
    transport: str,
    requests: Sequence[HttpRequest],
    labels: Sequence[tuple[str, str]],
    blob: bytes,
    idle_timeout: float,
    batch_size: int,
    offsets: Sequence[float] | None = None,
) -> dict[str, Any]:
    return {
        "base_url": base_url, "transport": transport, "requests": list(requests), "labels": list(labels),
        "parser_blob": blob, "idle_timeout": idle_timeout, "batch_size": batch_size,
        "offsets": None if offsets is None else list(offsets),
    }
