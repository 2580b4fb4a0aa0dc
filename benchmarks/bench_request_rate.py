"""Send lag of the open-loop client: does it keep to its arrival schedule under load?

Not collected by pytest (no test_ prefix). Example (the issue's figure: 1024 scheduled
requests/s against a local synthetic server, 2048 requests):

    python benchmarks/bench_request_rate.py --rates 64,256,1024 --requests 2048

For each rate and each `--shards` setting (default `1,auto`: one process, then the worker count
the client picks, `measure.sharding.plan_open_shards`) it starts the suite's own client
(`measure.client.run_load`, open loop, Poisson arrivals unless --burstiness says otherwise,
seeded) against `speedbench client-bench`'s
synthetic SSE server (SGLang's wire format; every stream `--events` events, `--interval-ms`
apart), with a concurrency cap high enough never to bind (`--cap`, default: the request count),
and reports from the records:
- send lag = actual send time - scheduled time (the client's own delay; no cap wait here):
  p50, p99, max, and the share of requests sent more than 1 ms / 10 ms late;
- achieved send rate = requests / (last send - first send) against the scheduled rate;
- the client's event-loop lag p99 over the measured window (the worst worker's when sharded).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from pytest_speedbench.commands.client_bench import SyntheticServer
from pytest_speedbench.data.schema import WorkItem
from pytest_speedbench.engines.base import EngineConfig
from pytest_speedbench.engines.sglang import SGLangEngine
from pytest_speedbench.measure.client import LoadSpec, run_load
from pytest_speedbench.metrics.request import request_cap_wait, request_send_lag


def measure(server: SyntheticServer, workdir: Path, rate: float, shards: int | None,
            args: argparse.Namespace) -> dict[str, Any]:
    engine = SGLangEngine(EngineConfig("sglang", "none", server_url=server.url), workdir)
    engine.start()
    items = [WorkItem(f"p{i}", "synthetic", ("x",), (1, 2, 3)) for i in range(args.requests)]
    cap = args.cap or args.requests
    spec = LoadSpec(cap, args.events, 0.0, warmup=0, request_timeout=120.0, seed=args.seed,
                    request_rate=rate, burstiness=args.burstiness, shards=shards)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = run_load(engine, items, spec)
    ok = [r for r in run.measured if r.ok]
    lag = np.array([request_send_lag(r) for r in ok]) * 1e3
    wait = np.array([request_cap_wait(r) for r in ok]) * 1e3
    sends = sorted(r.t_send for r in ok)
    span = sends[-1] - sends[0] if len(sends) > 1 else 0.0
    loop = run.client_info.get("loop_lag_p99_s")
    return {
        "rate": rate, "workers": run.client_info.get("shards", 1), "requests": len(ok), "failed": len(run.measured) - len(ok),
        "lag_p50_ms": float(np.percentile(lag, 50)), "lag_p99_ms": float(np.percentile(lag, 99)),
        "lag_max_ms": float(lag.max()), "late_1ms": float((lag > 1).mean()), "late_10ms": float((lag > 10).mean()),
        "cap_wait_max_ms": float(wait.max()),
        "achieved_rps": (len(sends) - 1) / span if span > 0 else math.inf,
        "loop_lag_p99_ms": loop * 1e3 if loop is not None else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="64,256,1024", help="scheduled requests/s (comma list)")
    parser.add_argument("--requests", type=int, default=2048, help="requests per rate")
    parser.add_argument("--events", type=int, default=16, help="events per stream")
    parser.add_argument("--interval-ms", type=float, default=20.0, help="synthetic server's gap between events")
    parser.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of the gaps (1 = Poisson)")
    parser.add_argument("--cap", type=int, default=0, help="concurrency cap (0: the request count, never binding)")
    parser.add_argument("--server-procs", type=int, default=2, help="synthetic server processes")
    parser.add_argument("--shards", default="1,auto", help="client worker processes per rate (comma list; auto: "
                        "the client's own choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rates = [float(x) for x in args.rates.split(",") if x.strip()]
    settings = [None if x.strip() == "auto" else int(x) for x in args.shards.split(",") if x.strip()]
    print(f"{args.requests} requests per rate, {args.events} events {args.interval_ms:g} ms apart per stream, "
          f"burstiness {args.burstiness:g}, cap {args.cap or args.requests}")
    print(f"{'rate/s':>8} {'workers':>7} {'achieved/s':>10} {'lag p50 ms':>10} {'p99 ms':>8} {'max ms':>8} {'>1ms':>6} {'>10ms':>6} "
          f"{'loop p99 ms':>11} {'failed':>6}")
    with tempfile.TemporaryDirectory(prefix="speedbench-rate-") as tmp, \
            SyntheticServer(processes=args.server_procs, interval=args.interval_ms / 1e3, workdir=Path(tmp)) as server:
        for rate, shards in ((r, s) for r in rates for s in settings):
            row = measure(server, Path(tmp), rate, shards, args)
            loop = f"{row['loop_lag_p99_ms']:.2f}" if row["loop_lag_p99_ms"] is not None else "-"
            print(f"{rate:>8g} {row['workers']:>7} {row['achieved_rps']:>10.1f} {row['lag_p50_ms']:>10.3f} {row['lag_p99_ms']:>8.2f} "
                  f"{row['lag_max_ms']:>8.2f} {row['late_1ms']:>6.1%} {row['late_10ms']:>6.1%} {loop:>11} "
                  f"{row['failed']:>6}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
