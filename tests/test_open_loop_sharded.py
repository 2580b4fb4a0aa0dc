"""Open-loop load (--request-rate) spread over worker processes: the worker count from the rate,
and a sharded run against the synthetic SSE server that keeps the unsharded schedule, sends
every request once, never before it is due, and never more than the cap at once."""

from __future__ import annotations

import math
import warnings

import pytest

from pytest_speedbench.commands.client_bench import SyntheticServer
from pytest_speedbench.data.schema import WorkItem
from pytest_speedbench.engines.base import EngineConfig
from pytest_speedbench.engines.sglang import SGLangEngine
from pytest_speedbench.measure.arrivals import arrival_offsets
from pytest_speedbench.measure.client import LoadSpec, run_load
from pytest_speedbench.measure.sharding import plan_open_shards
from pytest_speedbench.metrics.request import request_cap_wait, request_send_lag
from test_sharding import max_in_flight


def test_the_open_loop_worker_count_follows_the_rate_and_the_cap():
    assert plan_open_shards(64, 1024, cpus=2, sends_per_process=128, streams_per_process=256).workers == 2  # cap
    assert plan_open_shards(64, 8, cpus=4, sends_per_process=128).workers == 1
    plan = plan_open_shards(1024, 8, cpus=16, sends_per_process=128)
    assert plan.workers == 8 and "1024 req/s > 128 per process" in plan.reason
    assert plan_open_shards(1024, 8, cpus=2, sends_per_process=128).workers == 2  # one per CPU
    assert plan_open_shards(1024, 8, cpus=1, sends_per_process=128).workers == 1
    assert plan_open_shards(1024, 8, 1, cpus=16).workers == 1  # requested wins
    assert plan_open_shards(math.inf, 8, cpus=16).workers == 1  # all at once: the cap's streams decide


def _run(server: SyntheticServer, tmp_path, n: int, shards: int):
    engine = SGLangEngine(EngineConfig("sglang", "none", server_url=server.url), tmp_path)
    engine.start()
    items = [WorkItem(f"p{i}", "qa", ("x",), (1, 2, 3)) for i in range(n)]
    spec = LoadSpec(4, 8, 0.0, warmup=1, request_rate=300.0, burstiness=0.5, seed=7, shards=shards)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_load(engine, items, spec)


def _offsets(records) -> list[float]:
    dues = sorted(r.t_scheduled for r in records)
    return [d - dues[0] for d in dues]


def test_a_sharded_open_loop_keeps_the_schedule_the_cap_and_sends_each_request_once(tmp_path):
    n = 60
    with SyntheticServer(processes=1, interval=0.01, workdir=tmp_path) as server:
        one = _run(server, tmp_path, n, shards=1)
        two = _run(server, tmp_path, n, shards=2)
    info = two.client_info
    assert info["sharded"] is True and info["shards"] == 2 and info["shard_requests"] == [30, 30]
    assert info["load"]["mode"] == "open" and info["load"]["max_concurrency"] == 4
    assert one.client_info["shards"] == 1 and one.client_info["load"]["mode"] == "open"
    measured = [r for r in two.measured if r.ok]
    assert sorted(r.prompt_id for r in measured) == sorted(f"p{i}" for i in range(n))  # each once
    assert len([r for r in two.requests if r.warmup]) == 1
    # the same seed gives the same schedule whatever the worker count
    expected = arrival_offsets(n, 300.0, 0.5, seed=7)
    assert _offsets(measured) == pytest.approx(expected, abs=1e-9)
    assert _offsets(one.measured) == pytest.approx(_offsets(measured), abs=1e-9)
    # request i (prompt p<i>) is due at offset i, sent no earlier, after its slot when it waited
    start = min(r.t_scheduled for r in measured)
    for r in measured:
        assert r.t_scheduled - start == pytest.approx(expected[int(r.prompt_id[1:])], abs=1e-9)
        assert r.t_send >= r.t_scheduled
        assert r.t_slot is None or r.t_send >= r.t_slot >= r.t_scheduled
        assert request_send_lag(r) >= 0 and request_cap_wait(r) >= 0
    # at most 4 in flight over both workers; 8 x 10 ms streams at 300/s want ~24, so it binds
    assert max_in_flight(measured) <= 4
    assert sum(1 for r in measured if request_cap_wait(r) > 0) > 10
