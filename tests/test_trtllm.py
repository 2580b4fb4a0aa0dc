"""TensorRT-LLM engine against the fake `trtllm-serve`: YAML per drafter, 503 readiness, AL counters."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import pytest
import yaml

from pytest_speedbench.measure.client import LoadSpec, run_load
from pytest_speedbench.data.schema import WorkItem
from pytest_speedbench.engines.base import EngineConfig, SamplingParams
from pytest_speedbench.engines.lifecycle import pid_alive, process_group_members
from pytest_speedbench.engines.trtllm import SPEC as TRTLLM_SPEC
from pytest_speedbench.engines.trtllm import (
    TRTLLMEngine,
    TRTLLMParser,
    build_argv,
    counters_from_avg,
    llm_api_options,
)
from pytest_speedbench.errors import EngineError, EngineNotInstalled, RequestError, UsageError

FAKE = Path(__file__).resolve().parent / "fakes" / "fake_trtllm.py"
FAKE_CMD = f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKE))}"
SCHEMA_FIELDS = {"model", "prompt", "max_tokens", "temperature", "ignore_eos", "detokenize", "stream",
                 "stream_options", "seed"}


def _config(drafter: str = "eagle3", **kw) -> EngineConfig:
    kw.setdefault("model", "/models/target")
    kw.setdefault("ready_timeout_s", 30.0)
    return EngineConfig(engine="trtllm", drafter=drafter, **kw)


@pytest.mark.parametrize(
    ("drafter", "draft_model", "spec", "top"),
    [
        ("none", None, None, {}),
        ("ngram", None, {"decoding_type": "NGram", "max_draft_len": 3, "max_matching_ngram_size": 4},
         {"disable_overlap_scheduler": True}),
        ("draft", "/m/small", {"decoding_type": "DraftTarget", "max_draft_len": 3, "speculative_model_dir": "/m/small"}, {}),
        ("eagle", "/m/e", {"decoding_type": "Eagle", "max_draft_len": 3, "speculative_model_dir": "/m/e"}, {}),
        ("eagle3", "/m/e3", {"decoding_type": "Eagle3", "max_draft_len": 3, "speculative_model_dir": "/m/e3"}, {}),
        ("mtp", None, {"decoding_type": "MTP", "max_draft_len": 3, "num_nextn_predict_layers": 3}, {}),
    ],
)
def test_yaml_and_argv_for_every_drafter(drafter, draft_model, spec, top):
    config = _config(drafter, draft_model=draft_model, max_batch_size=16, engine_args=("--tp_size", "2"))
    options = llm_api_options(config)
    assert options.get("speculative_config") == spec
    assert options["kv_cache_config"] == {"enable_block_reuse": False}
    assert {k: v for k, v in options.items() if k not in ("speculative_config", "kv_cache_config")} == top
    argv = build_argv(config, port=5555, command=["trtllm-serve"], options_path=Path("/w/o.yaml"))
    assert argv == ["trtllm-serve", "/models/target", "--host", "127.0.0.1", "--port", "5555", "--backend", "pytorch",
                    "--max_batch_size", "16", "--extra_llm_api_options", "/w/o.yaml", "--tp_size", "2"]


def test_user_options_merge_and_missing_draft_model():
    config = _config("eagle3", draft_model="/m/e3",
                     extra=(("llm_api_options", {"kv_cache_config": {"free_gpu_memory_fraction": 0.7}}),))
    assert llm_api_options(config)["kv_cache_config"] == {"enable_block_reuse": False, "free_gpu_memory_fraction": 0.7}
    with pytest.raises(UsageError, match="needs --draft-model"):
        llm_api_options(_config("draft"))


def test_counters_from_avg_formula():
    # prefill token (avg 1/1), then steps of 3, 1, 4 tokens: 9 tokens over 4 iterations
    assert counters_from_avg(1, 1.0, 9, 9 / 4, 3) == {
        "decode_steps": 3, "accepted": 5, "drafted": 9, "engine_avg_decoded_tokens_per_iter": 2.25,
        "drafted_steps": 3}
    # a server that does not count the context iteration: avg 0 on chunk 0 -> 0 iterations
    assert counters_from_avg(1, None, 9, 8 / 3)["decode_steps"] == 2  # missing a_0 assumes 1 context iteration
    assert counters_from_avg(1, 1.0, 1, 1.0) is None  # nothing after prefill
    assert counters_from_avg(1, 1.0, 9, None) is None


def test_parser_coalesced_chunks_still_give_exact_counters():
    p = TRTLLMParser(True, 4)
    events = [([7], 1.0), ([1, 2, 3], 2.0), ([4, 5, 6, 8, 9], 10 / 4)]  # second event = 2 steps coalesced
    out = []
    for n, (ids, avg) in enumerate(events):
        finish = '"length"' if n == len(events) - 1 else "null"
        out.append(p.parse(f'{{"choices":[{{"index":0,"text":"","token_ids":{ids},"finish_reason":{finish},'
                           f'"avg_decoded_tokens_per_iter":{avg}}}]}}'.encode()))
    assert [e.new_token_ids for e in out] == [[7], [1, 2, 3], [4, 5, 6, 8, 9]]
    assert out[-1].finished and out[-1].counters["decode_steps"] == 3 and out[-1].counters["accepted"] == 5
    with pytest.raises(RequestError, match="detokenize"):
        TRTLLMParser(True, 3).parse(b'{"choices":[{"index":0,"text":"hi","finish_reason":null}]}')


def test_request_body_holds_only_schema_fields():
    engine = TRTLLMEngine(_config("none"), Path("."))
    body = json.loads(engine.build_request([4, 5], SamplingParams(0.0, 8)).body)
    assert set(body) <= SCHEMA_FIELDS and body["detokenize"] is False and body["prompt"] == [4, 5]
    body = json.loads(engine.build_request([4, 5], SamplingParams(1.0, 8, seed=3)).body)
    assert body["seed"] == 3


def _engine(tmp_path, monkeypatch, drafter="eagle3", mode="ok", **kw) -> TRTLLMEngine:
    monkeypatch.setenv("SPEEDBENCH_TRTLLM_CMD", FAKE_CMD)
    monkeypatch.setenv("FAKE_ENGINE_MODE", mode)
    monkeypatch.setenv("FAKE_ENGINE_ARGV_FILE", str(tmp_path / "argv.json"))
    monkeypatch.setenv("FAKE_ENGINE_GROUND_TRUTH", str(tmp_path / "truth.jsonl"))
    monkeypatch.setenv("SPEEDBENCH_NVIDIA_SMI", "")
    kw.setdefault("draft_model", "/m/e3" if drafter in ("eagle3", "eagle", "draft") else None)
    return TRTLLMEngine(_config(drafter, **kw), tmp_path / "logs")


def test_launch_503_readiness_per_request_counters_and_teardown(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_DELAY", "0.6")
    monkeypatch.setenv("FAKE_ENGINE_WORKER", "1")
    engine = _engine(tmp_path, monkeypatch, mode="slow_start", draft_length=3, max_batch_size=2)
    engine.start()
    try:
        info = engine.info()
        assert info["launch_command"].endswith(shlex.join(json.loads((tmp_path / "argv.json").read_text())))
        assert info["version"] == "1.2.1" and info["ready_s"] >= 0.5
        assert info["startup_states"] == ["initializing"]  # 503s carried x-trtllm-server-state
        written = yaml.safe_load(Path(engine._argv[engine._argv.index("--extra_llm_api_options") + 1]).read_text())
        assert written == info["llm_api_options"]
        items = [WorkItem(f"p{i}", "qa", ("x",), tuple(range(i, i + 20))) for i in range(3)]
        run = run_load(engine, items, LoadSpec(batch_size=2, max_new_tokens=20, temperature=0.0, warmup=0))
    finally:
        engine.stop()
    truth = {tuple(t["steps"]) for t in map(json.loads, (tmp_path / "truth.jsonl").read_text().splitlines())}
    got = set()
    for r in run.measured:
        assert r.ok and r.num_tokens == 20
        c = r.counters
        assert c["decode_steps"] == len(r.chunk_tokens) - 1 and c["accepted"] == sum(r.chunk_tokens[1:]) - c["decode_steps"]
        assert c["drafted"] == 3 * c["decode_steps"]
        got.add(tuple(r.chunk_tokens[1:]))
    assert got == truth
    log_text = Path(info["log"]).read_text()
    worker = int(log_text.split("worker pid ")[1].split()[0])
    assert not pid_alive(worker) and process_group_members(engine._server.pid) == []


def test_bad_yaml_key_crashes_startup_with_its_message(tmp_path, monkeypatch):
    engine = _engine(tmp_path, monkeypatch, drafter="ngram", ready_timeout_s=600.0,
                     extra=(("llm_api_options", {"speculative_config": {"bogus_knob": 1}}),))
    t0 = time.monotonic()
    with pytest.raises(EngineError) as err:
        engine.start()
    assert time.monotonic() - t0 < 30  # not the 600 s readiness timeout
    assert "bogus_knob: Extra inputs are not permitted" in str(err.value)


def test_unknown_cli_option_is_a_click_error(tmp_path, monkeypatch):
    engine = _engine(tmp_path, monkeypatch, drafter="none", engine_args=("--max-batch-size", "4"))
    with pytest.raises(EngineError) as err:
        engine.start()
    assert "exited with code 2" in str(err.value) and "No such option: --max-batch-size" in str(err.value)


def test_not_installed_hint(monkeypatch):
    monkeypatch.delenv("SPEEDBENCH_TRTLLM_CMD", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(EngineNotInstalled, match="pip install tensorrt-llm"):
        TRTLLM_SPEC.check_installed()
