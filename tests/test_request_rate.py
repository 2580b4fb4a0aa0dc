"""Open-loop load (--request-rate, --burstiness), goodput against latency SLOs (--goodput) and
the send lag of the client's schedule: arrivals, matrix ids, options, maths, the client against
a fake server, and the plugin end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpcore  # noqa: F401  (imported at collection: see tests/test_plugin_gates.py)
import numpy as np
import pytest

from conftest import SUITE
from pytest_speedbench.errors import UsageError
from pytest_speedbench.measure.arrivals import arrival_offsets
from pytest_speedbench.measure.records import RequestRecord
from pytest_speedbench.metrics import goodput as G
from pytest_speedbench.metrics.request import request_cap_wait, request_send_lag
from pytest_speedbench.settings.matrix import expand
from pytest_speedbench.settings.options import parse_rate, parse_slos


def test_arrivals_have_the_rate_as_mean_and_the_burstiness_as_gamma_shape():
    n, rate = 20000, 8.0
    for shape in (0.25, 1.0, 4.0):
        gaps = np.diff(arrival_offsets(n, rate, shape, seed=1))
        assert gaps.mean() == pytest.approx(1 / rate, rel=0.05)
        # a gamma's coefficient of variation is 1 / sqrt(shape): Poisson 1, bursty 2, regular 0.5
        assert gaps.std() / gaps.mean() == pytest.approx(1 / math.sqrt(shape), rel=0.05)
    assert arrival_offsets(5, rate, seed=3) == arrival_offsets(5, rate, seed=3)
    assert arrival_offsets(5, rate, seed=3) != arrival_offsets(5, rate, seed=4)
    assert arrival_offsets(3, math.inf) == [0.0, 0.0, 0.0]
    assert arrival_offsets(4, rate)[0] == 0.0


def test_request_rates_are_a_matrix_axis_and_twins_keep_theirs():
    m = expand(["sglang"], ["none", "eagle3"], ["qualitative"], [], [4], [0.0], request_rates=[8.0, math.inf])
    ids = [c.id for c in m.cases]
    assert ids == ["sglang-none-qualitative-bs4-t0-r8", "sglang-none-qualitative-bs4-t0-rinf",
                   "sglang-eagle3-qualitative-bs4-t0-r8", "sglang-eagle3-qualitative-bs4-t0-rinf"]
    sd = m.cases[2]
    assert sd.twin() == m.cases[0]
    assert sd.params()["request_rate"] == 8.0
    closed = expand(["sglang"], ["none"], ["qualitative"], [], [4], [0.0])
    assert closed.cases[0].id == "sglang-none-qualitative-bs4-t0" and "request_rate" not in closed.cases[0].params()


@pytest.mark.parametrize("raw", ["0", "-2", "abc", "nan"])
def test_a_bad_request_rate_names_the_value_and_what_is_valid(raw):
    with pytest.raises(UsageError, match=f"--request-rate: '{raw}' is not a positive rate.*or inf"):
        parse_rate(raw)


def test_rates_parse():
    assert [parse_rate(x) for x in ("8", "0.5", "inf", "INF")] == [8.0, 0.5, math.inf, math.inf]


def test_goodput_slos_parse_and_bad_ones_name_the_valid_names():
    assert parse_slos("ttft:200, tpot:50,e2e:5000") == {"ttft": 0.2, "tpot": 0.05, "e2e": 5.0}
    with pytest.raises(UsageError, match="'itl:5' is not NAME:MS; names: ttft, tpot, e2e"):
        parse_slos("itl:5")
    with pytest.raises(UsageError, match="positive number of milliseconds"):
        parse_slos("ttft:-1")


def rec(ttft: float, tpot: float, tokens: int = 11, t_send: float = 0.0, error: str | None = None) -> RequestRecord:
    times = [t_send + ttft + tpot * j for j in range(tokens)]
    return RequestRecord("p", "qa", t_send=t_send, chunk_times=times, chunk_tokens=[1] * tokens, error=error)


def test_goodput_counts_requests_meeting_every_slo_over_the_measured_window():
    reqs = [rec(0.1, 0.01), rec(0.3, 0.01), rec(0.1, 0.05, t_send=1.0), rec(0.1, 0.01, error="HTTP 500")]
    out = G.goodput(reqs, {"ttft": 0.2, "tpot": 0.02})
    # request 1 meets both; 2 misses TTFT; 3 misses TPOT; the failed one never counts
    assert out["goodput_requests"] == 1
    assert out["goodput_fraction"] == pytest.approx(1 / 3)
    window = (1.0 + 0.1 + 0.05 * 10) - 0.0
    assert out["goodput_rps"] == pytest.approx(1 / window)
    assert out["goodput_slos_ms"] == {"ttft": 200.0, "tpot": 20.0}


def test_send_lag_is_told_apart_from_waiting_for_a_slot():
    r = RequestRecord("p", "qa", t_send=5.3, t_scheduled=5.0, t_slot=5.25)
    assert request_cap_wait(r) == pytest.approx(0.25)
    assert request_send_lag(r) == pytest.approx(0.05)
    assert request_send_lag(RequestRecord("p", "qa", t_send=1.0)) is None


def test_the_open_loop_client_keeps_its_schedule_order_and_its_cap(tmp_path):
    from pytest_speedbench.commands.client_bench import SyntheticServer
    from pytest_speedbench.data.schema import WorkItem
    from pytest_speedbench.engines.base import EngineConfig
    from pytest_speedbench.engines.sglang import SGLangEngine
    from pytest_speedbench.measure.client import LoadSpec, run_load

    items = [WorkItem(f"p{i}", "qa", ("x",), (1, 2, 3)) for i in range(40)]
    with SyntheticServer(processes=1, interval=0.01, workdir=tmp_path) as server:
        engine = SGLangEngine(EngineConfig("sglang", "none", server_url=server.url), tmp_path)
        engine.start()
        spec = LoadSpec(3, 8, 0.0, warmup=1, request_rate=200.0, burstiness=0.5, seed=7, shards=1)
        with _quiet():
            run = run_load(engine, items, spec)
    measured = [r for r in run.measured if r.ok]
    assert len(measured) == 40
    assert all(r.t_scheduled is not None for r in measured)
    assert all(r.t_scheduled is None for r in run.requests if r.warmup)  # warmup stays closed loop
    by_due = sorted(measured, key=lambda r: r.t_scheduled)
    start = by_due[0].t_scheduled
    assert [r.t_scheduled - start for r in by_due] == pytest.approx(arrival_offsets(40, 200.0, 0.5, seed=7))
    assert all(r.t_send >= r.t_scheduled for r in measured)
    assert all(r.t_slot is None or r.t_send >= r.t_slot >= r.t_scheduled for r in measured)
    # at most 3 in flight: at every send, fewer than 3 earlier requests are still streaming
    for r in measured:
        busy = sum(1 for o in measured if o is not r and o.t_send < r.t_send < o.chunk_times[-1])
        assert busy < 3
    # 8 events x 10 ms per request at 200/s and a cap of 3: requests must have queued for a slot
    assert sum(1 for r in measured if request_cap_wait(r) > 0) > 10
    assert run.client_info["load"] == {"mode": "open", "request_rate": 200.0, "arrivals": "gamma(shape=0.5)",
                                       "burstiness": 0.5, "seed": 7, "max_concurrency": 3}


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def test_a_request_rate_sweep_with_goodput_end_to_end(fake_sglang, pytester: pytest.Pytester,
                                                      tiny_tokenizer_dir: Path, prompts_file: Path):
    ar = fake_sglang("--algorithm", "NONE", "--step-ms", "5")
    sd = fake_sglang("--accept", "0.9,0.8,0.7", "--step-ms", "5")
    pytester.makepyfile(test_speedbench=SUITE)
    out = pytester.path / "run.json"
    result = pytester.runpytest(
        "--engine=sglang", f"--tokenizer={tiny_tokenizer_dir}", f"--dataset={prompts_file}",
        "--num-prompts=3", "--split=qualitative", "--warmup=0", "--output-len=16", "--batch-size=2",
        f"--server-url=none={ar.url},eagle3={sd.url}", "--request-rate=50,inf", "--goodput=ttft:10000,tpot:1000",
        "--speedbench-rounds=1", f"--speedbench-json={out}", "-p", "no:cacheprovider", "-W", "ignore::Warning",
    )
    result.assert_outcomes(passed=4)
    doc = json.loads(out.read_text())
    bench = {b["param"]: b for b in doc["benchmarks"]}
    assert set(bench) == {"sglang-none-qualitative-bs2-t0-r50", "sglang-none-qualitative-bs2-t0-rinf",
                          "sglang-eagle3-qualitative-bs2-t0-r50", "sglang-eagle3-qualitative-bs2-t0-rinf"}
    sd50 = bench["sglang-eagle3-qualitative-bs2-t0-r50"]
    assert sd50["params"]["request_rate"] == 50.0
    info = sd50["extra_info"]
    assert info["client"]["load"]["mode"] == "open" and info["client"]["load"]["max_concurrency"] == 2
    assert info["goodput_fraction"] == 1.0  # SLOs far beyond a 5 ms-step fake
    assert info["goodput_requests"] == info["num_requests"]
    from pytest_speedbench.metrics import catalogue

    assert [catalogue.undeclared(b["extra_info"]) for b in doc["benchmarks"]] == [[]] * 4  # the schema holds
    # arrivals and SLOs change the numbers: both are in the settings fingerprint a gate compares
    assert info["settings_fingerprint"]["burstiness"] == "1.0"
    assert info["settings_fingerprint"]["goodput"] == "tpot:1000ms,ttft:10000ms"
    assert info["speedup_goodput"] == pytest.approx(
        info["goodput_rps"] / bench["sglang-none-qualitative-bs2-t0-r50"]["extra_info"]["goodput_rps"], rel=0.5)
    assert info["send_lag_s"]["p50"] is not None
    inf = bench["sglang-eagle3-qualitative-bs2-t0-rinf"]
    assert inf["params"]["request_rate"] == "inf" and inf["extra_info"]["client"]["load"]["request_rate"] == "inf"
    assert "Infinity" not in out.read_text()  # strict JSON

    # the report plots goodput against the rate, one line per engine/drafter, inf right of 50
    pytest.importorskip("matplotlib")
    from pytest_speedbench.results import report
    from pytest_speedbench.results.export import load_runs, runs_dataframe

    fig = report.make_figures(runs_dataframe(load_runs([out])))["goodput_vs_rate"]
    left = fig.axes[0]
    lines = {line.get_label(): line for line in left.get_lines()}
    assert set(lines) == {"sglang none", "sglang eagle3"}
    xs, ys = lines["sglang eagle3"].get_data()
    assert list(xs) == [50.0, 100.0]
    assert list(ys) == pytest.approx([info["goodput_rps"], inf["extra_info"]["goodput_rps"]])
    assert [t.get_text() for t in left.get_xticklabels()] == ["50", "inf"]
