"""Plots, table and JUnit properties read one AL source: a llama.cpp-like run (one token per
event, engine counters authoritative) must not plot chunk histograms that contradict the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("pandas")

from pytest_speedbench.engines.llamacpp import normalize_timings  # noqa: E402
from pytest_speedbench.measure.records import RequestRecord, RunRecords  # noqa: E402
from pytest_speedbench.metrics import run as M  # noqa: E402
from pytest_speedbench.metrics.speedup import empty_speedups  # noqa: E402
from pytest_speedbench.results import report  # noqa: E402
from pytest_speedbench.results.document import benchmark_entry, results_document  # noqa: E402
from pytest_speedbench.results.export import load_runs  # noqa: E402
from pytest_speedbench.results.gates import fmt, junit_properties  # noqa: E402

# accepted drafts per verification step, per request (gamma 3), in two categories
ACCEPTS = {"coding": [[3, 3, 1, 0, 2], [2, 3, 3]], "writing": [[0, 0, 1, 0, 0, 0, 1], [1, 0, 2, 0]]}


def llama_like_request(prompt_id: str, category: str, accepts: list[int], t_send: float) -> RequestRecord:
    """One token per SSE event (llama-server), the tokens of one step 50 us apart, steps 30 ms
    apart; counters from llama-server's own `timings` spelling."""
    t, times = t_send + 0.2, []
    times.append(t)  # prefill token
    for a in accepts:
        t += 0.03
        times += [t + j * 5e-5 for j in range(a + 1)]
    predicted = len(times)
    counters = normalize_timings({"predicted_n": predicted, "draft_n": 3 * len(accepts),
                                  "draft_n_accepted": sum(accepts)}, spec=True)
    return RequestRecord(prompt_id, category, t_send=t_send, chunk_times=times, chunk_tokens=[1] * predicted,
                         counters=counters)


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory) -> tuple[Path, dict]:
    requests = [llama_like_request(f"{cat}-{i}", cat, acc, t_send=i * 2.0)
                for cat, runs in ACCEPTS.items() for i, acc in enumerate(runs)]
    extra = {**M.compute_run_metrics(RunRecords(requests), draft_length=3), **empty_speedups()}
    params = {"engine": "llamacpp", "drafter": "ngram", "split": "qualitative", "bucket": None,
              "batch_size": 1, "temperature": 0.0}
    name = "test_speculative_decoding[llamacpp-ngram-qualitative-bs1-t0]"
    entry = benchmark_entry(name, f"test_speedbench.py::{name}", "llamacpp", params, [1.0] * len(requests),
                            json.loads(json.dumps(extra)), {})
    path = tmp_path_factory.mktemp("llama") / "0001_llama.json"
    path.write_text(json.dumps(results_document([entry], {}, machine={}, commit={})))
    return path, entry["extra_info"]


def test_histogram_mean_equals_the_tables_al_source(llama_run, tmp_path):
    path, extra = llama_run
    assert extra["al_source"] == "engine_counters"
    assert set(extra["al_histogram_chunks"]) == {"1"}  # what the chunks alone say: no draft accepted
    built = report.build_report(load_runs([path]), tmp_path, formats=("md",))
    assert {"al_histogram", "conditional_acceptance", "al_by_category"} <= set(built.figures)
    figures = report.make_figures(report.runs_dataframe(load_runs([path])))

    (bars,) = [c for c in figures["al_histogram"].axes[0].containers]
    ks = [int(t.get_text()) for t in figures["al_histogram"].axes[0].get_xticklabels()]
    plotted_mean = sum(k * p.get_height() for k, p in zip(ks, bars.patches))
    # the pooled AL over steps is the histogram's mean; from the counters, as the table's AL
    steps = sum(len(a) for runs in ACCEPTS.values() for a in runs)
    tokens = sum(a + 1 for runs in ACCEPTS.values() for acc in runs for a in acc)
    assert plotted_mean == pytest.approx(tokens / steps)
    assert plotted_mean == pytest.approx(extra["acceptance_length_pooled"])
    assert max(ks) == 4  # steps that accepted all three drafts are visible

    headers, rows = report.summary_rows(report.runs_dataframe(load_runs([path])))
    al_cell = rows[0][headers.index("AL")]
    assert al_cell.startswith(fmt(extra["acceptance_length_counters"]))
    assert extra["acceptance_length"] == pytest.approx(extra["acceptance_length_counters"])

    (line,) = figures["conditional_acceptance"].axes[0].get_lines()
    assert list(line.get_ydata()) == pytest.approx(extra["conditional_acceptance_rate"])
    assert line.get_ydata()[0] > 0  # the chunks alone would plot P = 0

    overall = figures["al_by_category"].axes[0].containers[0].patches[0].get_height()
    assert overall == pytest.approx(extra["acceptance_length"])

    props = dict(junit_properties(extra))
    assert props["speedbench.al_source"] == "engine_counters"
    assert props["speedbench.al_histogram_source"] == "engine_counters+bursts"
    assert float(props["speedbench.acceptance_length_pooled"]) == pytest.approx(plotted_mean, rel=1e-5)
