"""`speedbench client-bench`: measure the client itself against a cheap synthetic SSE server.

The client must not be the bottleneck it measures. This command starts a synthetic server
that speaks SGLang's native /generate stream (several processes sharing one port with
SO_REUSEPORT, each a bare `asyncio.Protocol`), whose every event carries, as its one output
token id, the `perf_counter_ns()` at which it was written. The real client (`client.run_load`
with the SGLang engine attached) then streams at each concurrency, and for every event we know
receive lag = receipt time - send time on the one host-wide monotonic clock. Reported per
level: client CPU microseconds per event, lag p50/p99/max, achieved events/s, event-loop lag,
and the output TPS the suite computes against the server's true emission rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_speedbench.commands import command
from pytest_speedbench.errors import UsageError
from pytest_speedbench.measure.synthetic_server import SyntheticServer

DEFAULT_CONCURRENCY = (1, 64, 256, 512, 1024)


# -- measuring --------------------------------------------------------------------------------


def _quantile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def measure_level(
    server: SyntheticServer, concurrency: int, *, events: int, rounds: int, shards: int | None, transport: str
) -> dict[str, Any]:
    """Drive the real client at one concurrency; returns the figures of that level."""
    from pytest_speedbench.metrics import run as metrics
    from pytest_speedbench.measure.client import LoadSpec, run_load
    from pytest_speedbench.data.schema import WorkItem
    from pytest_speedbench.engines.base import EngineConfig
    from pytest_speedbench.engines.sglang import SGLangEngine

    engine = SGLangEngine(EngineConfig("sglang", "none", server_url=server.url), Path(server.workdir))
    engine.start()
    items = [WorkItem(f"p{i}", "synthetic", ("x",), (1, 2, 3)) for i in range(concurrency * rounds)]
    spec = LoadSpec(concurrency, events, 0.0, warmup=0, request_timeout=60.0, transport=transport, shards=shards)
    since = time.perf_counter()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = run_load(engine, items, spec)
    records = [r for r in run.measured if r.ok]
    lags = sorted(t - sent / 1e9 for r in records for t, sent in zip(r.chunk_times, r.output_ids))
    info = run.client_info
    n_events = len(lags)
    start = min((r.t_send for r in records), default=since)
    end = max((r.chunk_times[-1] for r in records), default=since)
    truth = server.emission(since)
    true_tps = None
    if truth:
        window = max(b for _, b, _ in truth) - min(a for a, _, _ in truth)
        true_tps = sum(n for *_, n in truth) / window if window > 0 else None
    suite_tps = metrics.output_tps(records)
    return {
        "concurrency": concurrency,
        "transport": info.get("transport"),
        "sharded": bool(info.get("sharded")),
        "shards": info.get("shards", 1),
        "requests": len(records),
        "failed": len(run.measured) - len(records),
        "events": n_events,
        "events_per_s": n_events / (end - start) if end > start else None,
        "cpu_us_per_event": info.get("client_cpu_us_per_event"),
        "lag_p50_ms": _ms(_quantile(lags, 0.5)),
        "lag_p99_ms": _ms(_quantile(lags, 0.99)),
        "lag_max_ms": _ms(lags[-1] if lags else None),
        "loop_lag_p99_ms": _ms(info.get("loop_lag_p99_s")),
        "suite_output_tps": suite_tps,
        "true_emission_tps": true_tps,
        "tps_error_pct": (suite_tps / true_tps - 1) * 100 if suite_tps and true_tps else None,
        "client_limited": info.get("client_limited"),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def run_bench(
    concurrency: Sequence[int], *, events: int = 50, interval_ms: float = 20.0, rounds: int = 2,
    server_procs: int = 2, shard_modes: Sequence[int | None] = (1, None), transports: Sequence[str] = ("protocol",),
) -> dict[str, Any]:
    """Every (transport, shard mode, concurrency) level against one synthetic server."""
    from pytest_speedbench.measure.sharding import STREAMS_PER_PROCESS, clock_is_shared, usable_cpus

    levels = []
    with SyntheticServer(server_procs, interval_ms / 1e3) as server:
        for transport in transports:
            for shards in shard_modes:
                for c in concurrency:
                    level = measure_level(server, c, events=events, rounds=rounds, shards=shards, transport=transport)
                    level["shard_mode"] = "auto" if shards is None else shards
                    levels.append(level)
                    print(format_row(level), file=sys.stderr, flush=True)
    return {
        "machine": {"cpus": usable_cpus(), "python": platform.python_version(), "platform": platform.platform(),
                    "uvloop": _has("uvloop"), "load_avg": os.getloadavg()},
        "settings": {"events_per_request": events, "interval_ms": interval_ms, "rounds": rounds,
                     "server_processes": server_procs, "streams_per_process": STREAMS_PER_PROCESS},
        "clock_shared_across_processes": clock_is_shared(),
        "levels": levels,
    }


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


HEADER = ("| transport | shards | streams | events/s | CPU us/event | lag p50 ms | lag p99 ms | lag max ms "
          "| loop lag p99 ms | output TPS error |")


def _f(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_row(level: dict[str, Any]) -> str:
    shards = f"{level['shards']}" + (" (auto)" if level.get("shard_mode") == "auto" else "")
    return (
        f"| {level['transport']} | {shards} | {level['concurrency']} | {_f(level['events_per_s'], '.0f')} "
        f"| {_f(level['cpu_us_per_event'], '.1f')} | {_f(level['lag_p50_ms'], '.2f')} | {_f(level['lag_p99_ms'], '.2f')} "
        f"| {_f(level['lag_max_ms'], '.1f')} | {_f(level['loop_lag_p99_ms'], '.2f')} "
        f"| {_f(level['tps_error_pct'], '+.2f')}% |"
    )


def format_table(result: dict[str, Any]) -> str:
    lines = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    lines += [format_row(level) for level in result["levels"]]
    return "\n".join(lines)


def _parse_shards(raw: str) -> list[int | None]:
    modes: list[int | None] = []
    for part in raw.split(","):
        part = part.strip()
        if part == "auto":
            modes.append(None)
        elif part.isdigit() and int(part) >= 1:
            modes.append(int(part))
        else:
            raise UsageError(f"--shards: {part!r} is not a shard count; use positive integers or 'auto'")
    return modes


def _parse_ints(raw: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{flag}: {raw!r} is not a comma list of integers") from None
    if not values or min(values) < 1:
        raise UsageError(f"{flag}: values must be positive integers, got {raw!r}")
    return values


def register(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "client-bench", help="measure the streaming client against a synthetic SSE server", run=run,
                description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", default=",".join(map(str, DEFAULT_CONCURRENCY)),
                   help="concurrent streams per level (comma list)")
    p.add_argument("--events", type=int, default=50, help="events per request")
    p.add_argument("--interval-ms", type=float, default=20.0, help="server step interval per stream")
    p.add_argument("--rounds", type=int, default=2, help="requests per stream slot")
    p.add_argument("--server-procs", type=int, default=2, help="synthetic server processes")
    p.add_argument("--shards", default="1,auto", help="client shard modes to compare: counts and/or 'auto'")
    p.add_argument("--transport", default="protocol", help="transports to compare (comma list: protocol,aiohttp)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")


def run(args: argparse.Namespace) -> int:
    from pytest_speedbench.measure.transport import resolve_kind

    concurrency = _parse_ints(args.concurrency, "--concurrency")
    transports = [resolve_kind(t.strip()) for t in args.transport.split(",") if t.strip()]
    if args.events < 2 or args.interval_ms <= 0 or args.rounds < 1 or args.server_procs < 1:
        raise UsageError("--events must be >= 2; --interval-ms, --rounds and --server-procs must be positive")
    result = run_bench(concurrency, events=args.events, interval_ms=args.interval_ms, rounds=args.rounds,
                       server_procs=args.server_procs, shard_modes=_parse_shards(args.shards), transports=transports)
    print(format_table(result))
    print(f"clock shared across processes: {result['clock_shared_across_processes']}; "
          f"machine: {result['machine']['cpus']} CPUs, load {result['machine']['load_avg'][0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0
