"""vLLM engine against the fake `vllm serve`: argv per drafter, readiness, counters, teardown."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import pytest
from conftest import SUITE

from pytest_speedbench.measure.client import LoadSpec, WorkItem, run_load
from pytest_speedbench.engines.base import EngineConfig, SamplingParams
from pytest_speedbench.engines.lifecycle import pid_alive, process_group_members
from pytest_speedbench.engines.vllm import SPEC as VLLM_SPEC
from pytest_speedbench.engines.vllm import VLLMEngine, VLLMParser, build_argv, parse_prometheus
from pytest_speedbench.errors import EngineError, EngineNotInstalled, RequestError, UsageError

FAKE = Path(__file__).resolve().parent / "fakes" / "fake_vllm.py"
FAKE_CMD = f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKE))}"


def _config(drafter: str = "ngram", **kw) -> EngineConfig:
    kw.setdefault("model", "org/target")
    kw.setdefault("ready_timeout_s", 30.0)
    return EngineConfig(engine="vllm", drafter=drafter, **kw)


def _spec_of(argv: list[str]) -> dict | None:
    return json.loads(argv[argv.index("--speculative-config") + 1]) if "--speculative-config" in argv else None


@pytest.mark.parametrize(
    ("drafter", "draft_model", "expected"),
    [
        ("none", None, None),
        ("ngram", None, {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 2}),
        ("draft", "org/small", {"method": "draft_model", "model": "org/small", "num_speculative_tokens": 4}),
        ("eagle", "org/eagle", {"method": "eagle", "model": "org/eagle", "num_speculative_tokens": 4}),
        ("eagle3", "org/eagle3", {"method": "eagle3", "model": "org/eagle3", "num_speculative_tokens": 4}),
        ("mtp", None, {"method": "mtp", "num_speculative_tokens": 4}),
    ],
)
def test_argv_for_every_drafter(drafter, draft_model, expected):
    config = _config(drafter, draft_model=draft_model, draft_length=4, max_batch_size=8,
                     engine_args=("--tensor-parallel-size", "2", "--gpu-memory-utilization", "0.85"))
    argv = build_argv(config, port=4321, command=["vllm"])
    assert argv[:8] == ["vllm", "serve", "org/target", "--host", "127.0.0.1", "--port", "4321",
                        "--no-enable-prefix-caching"]
    assert argv[argv.index("--max-num-seqs") + 1] == "8"
    assert _spec_of(argv) == expected
    assert argv[-4:] == ["--tensor-parallel-size", "2", "--gpu-memory-utilization", "0.85"]


def test_draft_drafters_need_a_draft_model():
    with pytest.raises(UsageError, match="needs --draft-model"):
        build_argv(_config("eagle3"), port=1, command=["vllm"])
    with pytest.raises(UsageError, match="needs --model"):
        build_argv(_config("none", model=None), port=1, command=["vllm"])


def test_parser_counts_token_ids_not_text():
    p = VLLMParser()
    ev = p.parse(b'{"choices":[{"index":0,"text":"Hello world","token_ids":[5],"finish_reason":null}]}')
    assert ev.new_token_ids == [5] and not ev.finished
    ev = p.parse(b'{"choices":[{"index":0,"text":"","token_ids":[6,7,8],"finish_reason":"length"}]}')
    assert ev.new_token_ids == [6, 7, 8] and ev.finished
    ev = p.parse(b'{"choices":[],"usage":{"completion_tokens":4}}')
    assert ev.new_token_ids == [] and p.usage == {"completion_tokens": 4}
    with pytest.raises(RequestError, match="return_token_ids"):
        VLLMParser().parse(b'{"choices":[{"index":0,"text":"x","finish_reason":null}]}')
    with pytest.raises(RequestError, match="boom"):
        VLLMParser().parse(b'{"object":"error","message":"boom"}')


def test_prometheus_parsing_sums_engines_and_maps_positions():
    text = "\n".join([
        "# TYPE vllm:spec_decode_num_drafts counter",
        'vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} 10.0',
        'vllm:spec_decode_num_drafts_total{engine="1",model_name="m"} 5.0',
        'vllm:spec_decode_num_drafts_created{engine="0",model_name="m"} 1.7e9',
        'vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 45.0',
        'vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="m"} 21.0',
        'vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="1"} 8.0',
        'vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="0"} 13.0',
    ])
    assert parse_prometheus(text) == {"steps": 15, "accepted": 21, "drafted": 45, "accepted_per_pos": [13, 8]}
    assert parse_prometheus('vllm:num_requests_running{engine="0"} 0.0\n') is None


def _items(n: int = 4) -> list[WorkItem]:
    return [WorkItem(f"p{i}", "coding", ("x",), tuple(range(10 + i, 40 + i))) for i in range(n)]


def _engine(tmp_path, monkeypatch, drafter="ngram", mode="ok", **kw) -> VLLMEngine:
    monkeypatch.setenv("SPEEDBENCH_VLLM_CMD", FAKE_CMD)
    monkeypatch.setenv("FAKE_ENGINE_MODE", mode)
    monkeypatch.setenv("FAKE_ENGINE_ARGV_FILE", str(tmp_path / "argv.json"))
    monkeypatch.setenv("FAKE_ENGINE_GROUND_TRUTH", str(tmp_path / "truth.jsonl"))
    monkeypatch.setenv("SPEEDBENCH_NVIDIA_SMI", "")
    return VLLMEngine(_config(drafter, **kw), tmp_path / "logs")


def test_launch_run_counters_and_teardown(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_DELAY", "0.5")
    monkeypatch.setenv("FAKE_ENGINE_WORKER", "1")
    engine = _engine(tmp_path, monkeypatch, mode="slow_start", draft_length=3, max_batch_size=2,
                     engine_args=("--max-model-len", "4096"))
    engine.start()
    try:
        info = engine.info()
        received = json.loads((tmp_path / "argv.json").read_text())
        assert info["launch_command"].endswith(shlex.join(received))  # the fake got exactly our argv
        assert info["version"] == "0.33.0" and info["model"] == "org/target"
        assert info["ready_s"] >= 0.4
        assert Path(info["log"]).exists()
        run = run_load(engine, _items(), LoadSpec(batch_size=2, max_new_tokens=24, temperature=0.0, warmup=1))
    finally:
        engine.stop()
    measured = run.measured
    assert len(measured) == 4 and all(r.ok for r in measured)
    assert all(r.num_tokens == 24 for r in measured)
    truth = [json.loads(line) for line in (tmp_path / "truth.jsonl").read_text().splitlines()]
    window = truth[1:]  # the first request was the warmup, outside the counter window
    steps = sum(len(t["steps"]) for t in window)
    accepted = sum(s - 1 for t in window for s in t["steps"])
    c = run.engine_counters
    assert c["steps"] == steps and c["accepted"] == accepted and c["drafted"] == 3 * steps
    assert c["accepted_per_pos"][0] == sum(1 for t in window for s in t["steps"] if s >= 2)
    assert sorted(sum(r.chunk_tokens[1:]) / (len(r.chunk_tokens) - 1) for r in measured) == sorted(
        sum(t["steps"]) / len(t["steps"]) for t in window)
    # teardown: leader and its forked worker are gone
    log_text = Path(info["log"]).read_text()
    worker = int(log_text.split("worker pid ")[1].split()[0])
    assert not pid_alive(engine._server.pid) and not pid_alive(worker)
    assert process_group_members(engine._server.pid) == []


def test_none_drafter_has_no_counters(tmp_path, monkeypatch):
    engine = _engine(tmp_path, monkeypatch, drafter="none")
    engine.start()
    try:
        assert "--speculative-config" not in json.loads((tmp_path / "argv.json").read_text())
        run = run_load(engine, _items(2), LoadSpec(batch_size=1, max_new_tokens=8, temperature=0.0, warmup=0))
    finally:
        engine.stop()
    assert run.engine_counters is None
    assert all(r.chunk_tokens == [1] * 8 for r in run.measured)


def test_crash_at_startup_fails_fast_with_log_tail(tmp_path, monkeypatch):
    engine = _engine(tmp_path, monkeypatch, mode="crash_start", ready_timeout_s=600)
    t0 = time.monotonic()
    with pytest.raises(EngineError) as err:
        engine.start()
    assert time.monotonic() - t0 < 15
    assert "exited with code 1 during startup" in str(err.value)
    assert "CUDA out of memory" in str(err.value)


def test_unknown_flag_is_rejected_like_argparse(tmp_path, monkeypatch):
    engine = _engine(tmp_path, monkeypatch, engine_args=("--no-such-flag", "1"))
    with pytest.raises(EngineError) as err:
        engine.start()
    assert "exited with code 2" in str(err.value) and "unrecognized arguments: --no-such-flag" in str(err.value)


def test_hang_hits_the_readiness_timeout_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_WORKER", "1")
    engine = _engine(tmp_path, monkeypatch, mode="hang_start", ready_timeout_s=3.0)
    with pytest.raises(EngineError, match="3 s readiness timeout") as err:
        engine.start()
    assert "engine log tail ---\n$ " in str(err.value)  # the tail starts with the launch command
    log_text = next((tmp_path / "logs").glob("*.log")).read_text()
    assert "stopped (exit code" in log_text
    for worker in [int(x.split()[0]) for x in log_text.split("worker pid ")[1:]]:
        assert not pid_alive(worker)


def test_crash_midstream_is_a_request_error(tmp_path, monkeypatch):
    engine = _engine(tmp_path, monkeypatch, mode="crash_midstream")
    engine.start()
    try:
        run = run_load(engine, _items(1), LoadSpec(batch_size=1, max_new_tokens=16, temperature=0.0, warmup=0,
                                                   request_timeout=5))
    except EngineError as exc:  # the metrics scrape after the window may fail too
        assert "metrics" in str(exc)
    else:
        assert run.measured[0].error
    finally:
        engine.stop()
    assert not engine._server.alive


def test_build_request_is_token_ids_with_usage():
    engine = VLLMEngine(_config("none"), Path("."))
    body = json.loads(engine.build_request([1, 2, 3], SamplingParams(0.7, 32, seed=5)).body)
    assert body == {"model": "org/target", "prompt": [1, 2, 3], "max_tokens": 32, "temperature": 0.7,
                    "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
                    "return_token_ids": True, "seed": 5}


def test_not_installed_names_the_install_hint(monkeypatch):
    monkeypatch.delenv("SPEEDBENCH_VLLM_CMD", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(EngineNotInstalled, match="pip install vllm"):
        VLLM_SPEC.check_installed()




@pytest.mark.slow
def test_plugin_launches_vllm_per_drafter_and_records_counters(
    pytester: pytest.Pytester, monkeypatch, tiny_tokenizer_dir: Path, prompts_file: Path
):
    """`pytest --engine=vllm --model=M --drafter=ngram,none` against the fake `vllm serve`."""
    import shutil

    tokenizer = pytester.path / "tok"
    shutil.copytree(tiny_tokenizer_dir, tokenizer)
    (tokenizer / "config.json").write_text('{"model_type": "llama"}')  # a folder models.py accepts
    monkeypatch.setenv("SPEEDBENCH_VLLM_CMD", FAKE_CMD)
    monkeypatch.setenv("SPEEDBENCH_NVIDIA_SMI", "")
    pytester.makepyfile(test_speedbench=SUITE)
    out = pytester.path / "out.json"
    result = pytester.runpytest(
        "--engine=vllm", "--model=org/target", "--drafter=ngram,none", f"--tokenizer={tokenizer}",
        f"--dataset={prompts_file}", "--num-prompts=2", "--split=qualitative", "--temperature=0",
        "--batch-size=2", "--warmup=0", "--output-len=24", "--engine-args=--max-model-len 2048",
        f"--speedbench-json={out}", "-p", "no:cacheprovider",
    )
    result.assert_outcomes(passed=2)
    doc = json.loads(out.read_text())
    entries = {b["param"]: b["extra_info"] for b in doc["benchmarks"]}
    sd = entries["vllm-ngram-qualitative-bs2-t0"]
    # Prometheus deltas reached the results: the fake streams one step per event, so the
    # counter AL equals the pooled chunk AL exactly
    assert sd["acceptance_length_counters"] > 1.0
    assert sd["acceptance_length_counters"] == pytest.approx(sd["acceptance_length_pooled"], abs=1e-12)
    assert entries["vllm-none-qualitative-bs2-t0"]["acceptance_length_counters"] is None
    engines = doc["speedbench"]["engines"]
    ngram = engines["vllm-ngram"]
    assert ngram["version"] == "0.33.0"
    assert "serve org/target --host 127.0.0.1" in ngram["launch_command"]
    assert "--max-model-len 2048" in ngram["launch_command"]
    assert json.loads(ngram["argv"][ngram["argv"].index("--speculative-config") + 1])["method"] == "ngram"
    assert "--speculative-config" not in engines["vllm-none"]["launch_command"]
