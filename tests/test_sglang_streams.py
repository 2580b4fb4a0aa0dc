"""Real SGLang 0.5.23 streams as ground truth: the adapter parses them, the fake matches them.

The recordings (fixtures/streams, and ../shared/sglang-cpu/streams where present) are what a
real server sent; nothing here is written from SGLang's source.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

import pytest

from pytest_speedbench.engines.sglang import SGLangParser

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fakes"))
from fake_sglang import load_recording  # noqa: E402

FIXTURES = ROOT / "fixtures" / "streams"
SHARED = Path(os.environ.get("SPEEDBENCH_SHARED_DIR") or ROOT.parent / "shared") / "sglang-cpu" / "streams"
RECORDINGS = sorted(FIXTURES.glob("sglang-*.jsonl")) + (sorted(SHARED.glob("*.sse")) if SHARED.is_dir() else [])
#: draft tokens per step (gamma) of every recorded SD server: --speculative-num-draft-tokens 4
GAMMA = 3


def events_of(path: Path) -> list[bytes]:
    """The SSE payloads (after `data: `) of a recording."""
    return [e[len(b"data: "):].rstrip(b"\n") for _, e in load_recording(path)["events"]]


def final_meta(path: Path) -> dict:
    payloads = [p for p in events_of(path) if p != b"[DONE]"]
    return json.loads(payloads[-1])["meta_info"]


def parse(path: Path) -> tuple[list[int], list[int], dict | None]:
    """(tokens per event, output ids, normalized counters) as the adapter sees the stream."""
    parser = SGLangParser()
    sizes: list[int] = []
    ids: list[int] = []
    counters = None
    for payload in events_of(path):
        event = parser.parse(payload)
        if event is None:
            continue
        if event.new_token_ids:
            sizes.append(len(event.new_token_ids))
            ids += event.new_token_ids
        counters = event.counters or counters
    return sizes, ids, counters


def test_fixture_recordings_exist_and_are_small() -> None:
    files = sorted(FIXTURES.glob("sglang-*.jsonl"))
    assert {f.name.split("-")[2] for f in files} == {"none", "ngram", "standalone"}
    assert sum(f.stat().st_size for f in files) < 200_000


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.name)
def test_adapter_parses_real_streams_and_counters_reconcile(path: Path) -> None:
    """64 tokens; NGRAM/STANDALONE counters: one verify step per event after the prefill token,
    proposed = steps x gamma, and steps + accepted = tokens after prefill + the end effect
    (the last step's drafts counted before the cut at max_new_tokens), at most gamma."""
    sizes, ids, counters = parse(path)
    meta = final_meta(path)
    assert sum(sizes) == len(ids) == meta["completion_tokens"] == 64
    assert sizes[0] == 1  # the prefill token
    if "none" in path.name:
        assert counters is None and not any(k.startswith("spec_") for k in meta)
        return
    assert counters is not None
    assert counters["decode_steps"] == meta["spec_verify_ct"] == len(sizes) - 1
    assert counters["drafted"] == counters["decode_steps"] * GAMMA
    overrun = counters["decode_steps"] + counters["accepted"] - (sum(sizes) - sizes[0])
    assert 0 <= overrun <= GAMMA
    assert sum(meta["spec_correct_drafts_histogram"]) == counters["decode_steps"]
    assert meta["spec_accept_length"] == pytest.approx(meta["completion_tokens"] / meta["spec_verify_ct"])
    assert "spec_accept_token_num" not in meta


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/sglang-cpu/streams is absent")
def test_shared_recordings_show_the_end_effect() -> None:
    """The README's facts: NGRAM 31 steps + 33 accepted = 64 for 63 streamed tokens."""
    _, _, c = parse(SHARED / "sglang-0.5.23-ngram-smollm2-64tok.sse")
    assert (c["decode_steps"], c["accepted"]) == (31, 33)


def _final_event(url: str, body: dict) -> tuple[dict, dict]:
    request = urllib.request.Request(url + "/generate", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        blocks = [b for b in resp.read().split(b"\n\n") if b.startswith(b"data: {")]
    return json.loads(blocks[0][6:])["meta_info"], json.loads(blocks[-1][6:])["meta_info"]


def test_fake_events_carry_the_real_keys(fake_sglang) -> None:
    """The fake's first and final meta_info have exactly the keys the real 0.5.23 server sends."""
    real = FIXTURES / "sglang-0.5.23-ngram-smollm2-64tok.jsonl"
    payloads = [p for p in events_of(real) if p != b"[DONE]"]
    real_first, real_final = json.loads(payloads[0])["meta_info"], json.loads(payloads[-1])["meta_info"]
    server = fake_sglang("--algorithm", "NGRAM", "--accept", "0.6,0.3,0.1", "--step-ms", "0")
    first, final = _final_event(server.url, {"input_ids": [1, 2, 3], "stream": True,
                                             "sampling_params": {"max_new_tokens": 16, "temperature": 0}})
    assert set(first) == set(real_first)
    assert set(final) == set(real_final)
    assert final["spec_num_proposed_drafts"] == final["spec_verify_ct"] * GAMMA


def test_fake_end_effect_counts_drafts_beyond_max_tokens(fake_sglang) -> None:
    server = fake_sglang("--accept", "1,1,1", "--end-effect", "--step-ms", "0")
    # all drafts accepted: 15 tokens after prefill = 4+4+4+3, the last step had 4 -> overrun 1
    _, final = _final_event(server.url, {"input_ids": [5, 6], "stream": True,
                                         "sampling_params": {"max_new_tokens": 16, "temperature": 0}})
    assert final["completion_tokens"] == 16
    assert (final["spec_verify_ct"], final["spec_num_correct_drafts"]) == (4, 12)
    assert server.truth()[0]["overrun"] == 1


def test_replay_serves_the_recorded_stream_byte_for_byte(fake_sglang) -> None:
    recording = FIXTURES / "sglang-0.5.23-standalone-layers24-smollm2-64tok.jsonl"
    header = json.loads(recording.read_text().splitlines()[0])
    server = fake_sglang("--replay", str(recording))
    request = urllib.request.Request(server.url + "/generate", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"input_ids": header["input_ids"], "stream": True}).encode())
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.headers["X-Replayed"] == recording.name
        body = resp.read()
    assert body == b"".join(e for _, e in load_recording(recording)["events"])
    times = [t for t, _ in load_recording(recording)["events"]]
    assert times == sorted(times) and times[-1] > 0  # receipt offsets kept per event
