"""Client sharding: the plan, the shared clock, and a sharded run against the fake SGLang server."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from pytest_speedbench.metrics import run as metrics
from pytest_speedbench.measure.client import (
    ClientLimitedWarning, LoadSpec, client_limited, client_shifts, run_load,
)
from pytest_speedbench.data.schema import WorkItem
from pytest_speedbench.engines.base import EngineConfig
from pytest_speedbench.engines.sglang import SGLangEngine
from pytest_speedbench.errors import SpeedbenchError
from pytest_speedbench.measure.records import RequestRecord
from pytest_speedbench.measure.sharding import clock_is_shared, plan_shards, split_slots


def test_plan_shards_switches_on_above_the_threshold_only_with_cpus():
    assert not plan_shards(256, cpus=16, streams_per_process=256).sharded
    plan = plan_shards(512, cpus=16, streams_per_process=256)
    assert plan.workers == 2 and "512 streams > 256" in plan.reason
    assert plan_shards(1024, cpus=2, streams_per_process=256).workers == 2  # capped by CPUs
    assert plan_shards(4096, cpus=16, streams_per_process=256).workers == 16
    assert plan_shards(1024, cpus=1, streams_per_process=256).workers == 1


def test_requested_shards_win_and_never_exceed_streams():
    assert plan_shards(3, 8, cpus=1).workers == 3
    assert plan_shards(8, 1, cpus=64).workers == 1
    with pytest.raises(SpeedbenchError, match="at least 1, got 0"):
        plan_shards(8, 0)


@pytest.mark.parametrize("batch,workers", [(512, 2), (513, 2), (1024, 3), (5, 4)])
def test_split_slots_adds_up_to_the_batch_size(batch, workers):
    slots = split_slots(batch, workers)
    assert sum(slots) == batch and len(slots) == workers and max(slots) - min(slots) <= 1


def test_perf_counter_is_one_clock_across_spawned_processes():
    assert clock_is_shared()


def max_in_flight(records: list[RequestRecord]) -> int:
    edges = sorted([(r.t_send, 1) for r in records] + [(r.chunk_times[-1], -1) for r in records])
    level = peak = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    return peak


def sglang(url: str, tmp_path: Path) -> SGLangEngine:
    engine = SGLangEngine(EngineConfig("sglang", "eagle3", server_url=url), tmp_path)
    engine.start()
    return engine


def items(n: int) -> list[WorkItem]:
    return [WorkItem(f"p{i}", "coding" if i % 2 else "writing", ("text",), (1, 2, 3, i)) for i in range(n)]


def test_sharded_run_keeps_the_batch_in_flight_and_merges_records(fake_sglang, tmp_path):
    server = fake_sglang("--step-ms", "5", "--accept", "0.7,0.5")
    engine = sglang(server.url, tmp_path)
    spec = LoadSpec(batch_size=6, max_new_tokens=24, temperature=0.0, warmup=1, shards=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ClientLimitedWarning)
        run = run_load(engine, items(18), spec)
    info = run.client_info
    assert info["sharded"] is True and info["shards"] == 3 and info["shard_slots"] == [2, 2, 2]
    assert sum(info["shard_requests"]) == 18
    measured = run.measured
    assert len(measured) == 18 and all(r.ok for r in measured)
    assert sorted(r.prompt_id for r in measured) == sorted(f"p{i}" for i in range(18))
    assert len([r for r in run.requests if r.warmup]) == 1
    # one clock: every record's times are ordered and within the parent's run
    assert all(r.t_send < r.chunk_times[0] <= r.chunk_times[-1] for r in measured)
    assert max_in_flight(measured) == 6
    # every token the server emitted arrives, so the suite's totals match the ground truth
    truth = server.truth()
    assert len(truth) == 19
    assert sum(r.num_tokens for r in run.requests) == sum(sum(t["steps"]) + 1 for t in truth) == 19 * 24
    assert metrics.output_tps([r for r in measured]) > 0
    assert info["client_events"] >= sum(len(r.chunk_tokens) for r in measured)
    assert info["client_cpu_us_per_event"] > 0


def test_multi_turn_runs_are_not_sharded_and_say_why(fake_sglang, tmp_path):
    server = fake_sglang("--step-ms", "1")
    engine = sglang(server.url, tmp_path)

    class Encoder:
        def encode_conversation(self, messages):
            return [1, 2, len(messages)]

        def decode(self, ids):
            return "answer"

    work = [WorkItem("m", "qa", ("q1", "q2"), (1, 2))] + items(3)
    spec = LoadSpec(batch_size=4, max_new_tokens=8, temperature=0.0, warmup=0, shards=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ClientLimitedWarning)
        run = run_load(engine, work, spec, Encoder())
    assert run.client_info["sharded"] is False
    assert "multi-turn" in run.client_info["shard_blocked"]
    assert len(run.measured) == 5  # the second turn was sent in the single process


def _stream(ttft: float, gap: float, events: int = 64) -> RequestRecord:
    return RequestRecord("p", "c", t_send=0.0, chunk_times=[ttft + gap * k for k in range(events)],
                         chunk_tokens=[1] * events)


def test_client_limited_fires_only_when_the_clients_delay_moves_a_latency():
    """The false alarm of real vLLM runs (p99 lag 4.83 ms against 10% of a 36.6 ms event gap,
    while TTFT and TPOT matched the server's) is gone; a lag that moves TTFT or the decode
    window by more than 2% still warns, naming the latency, the shift and the limit."""
    records = [_stream(ttft=0.060, gap=0.0366) for _ in range(4)]
    quiet = {"loop_lag_mean_s": 0.0004, "loop_lag_p50_s": 0.0002, "loop_lag_p99_s": 0.00483}
    assert client_shifts(quiet, records)["TTFT"] == pytest.approx((0.0004, 0.060))
    assert client_shifts(quiet, records)["step latency/TPOT"] == pytest.approx((0.00483, 0.0366 * 63))
    assert client_limited(quiet, records) is None
    late = client_limited({**quiet, "loop_lag_mean_s": 0.003, "shards": 1, "transport": "protocol"}, records)
    assert late is not None and late.startswith("client delay may move TTFT by 3.00 ms, 5.0% of its median 60.0 ms")
    assert "limit 2%" in late and "transport=protocol" in late
    stalls = client_limited({**quiet, "loop_lag_p99_s": 0.2}, records)
    assert stalls is not None and "step latency/TPOT by 200.00 ms" in stalls
    assert client_limited({"loop_lag_p99_s": None}, records) is None  # nothing measured, nothing claimed
    warm = [RequestRecord("w", "c", t_send=0.0, chunk_times=[1.0, 1.001], chunk_tokens=[1, 1], warmup=True)]
    assert client_shifts(quiet, warm) == {}  # warmup requests are not the measured latencies

def test_client_cpu_leaves_out_the_lag_monitors_own_wake_ups():
    """An idle measured window costs only the monitor's wake-ups: they are taken out of the
    client's CPU (measured on the same loop), so an idle client reads ~0, not the monitor."""
    import asyncio

    from pytest_speedbench.measure.stream import ClientMeter, asyncio_run

    async def idle() -> dict:
        meter = ClientMeter()
        meter.start()
        await asyncio.sleep(0.5)
        return await meter.stop()

    used = asyncio_run(idle())
    assert used["events"] == 0 and used["loop_lag_samples"] > 20
    assert used["monitor_cpu_s"] > 0
    assert used["cpu_s"] < used["monitor_cpu_s"]  # what is left is noise, not the monitor
