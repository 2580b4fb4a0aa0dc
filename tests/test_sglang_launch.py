"""SGLang launch support against the fake launcher: argv per drafter, flag probing across 0.5.x, counters."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from pytest_speedbench.measure.client import LoadSpec, run_load
from pytest_speedbench.data.schema import WorkItem
from pytest_speedbench.engines.base import EngineConfig
from pytest_speedbench.engines.lifecycle import pid_alive, process_group_members
from pytest_speedbench.engines.sglang import SPEC as SGLANG_SPEC
from pytest_speedbench.engines.sglang import SGLangEngine, build_argv, cuda_graph_args, probe_flags
from pytest_speedbench.errors import EngineError, EngineNotInstalled, UsageError

FAKE = Path(__file__).resolve().parent / "fakes" / "fake_sglang_launch.py"
FAKE_CMD = [sys.executable, str(FAKE)]
NEW_FLAGS = frozenset({"--model-path", "--host", "--port", "--disable-radix-cache", "--max-running-requests",
                       "--cuda-graph-max-bs-decode", "--speculative-algorithm", "--speculative-draft-model-path",
                       "--speculative-num-steps", "--speculative-eagle-topk", "--speculative-num-draft-tokens",
                       "--speculative-ngram-max-bfs-breadth", "--tp-size"})
OLD_FLAGS = (NEW_FLAGS - {"--cuda-graph-max-bs-decode"}) | {"--cuda-graph-max-bs"}


def _config(drafter: str, **kw) -> EngineConfig:
    kw.setdefault("model", "org/target")
    kw.setdefault("ready_timeout_s", 30.0)
    return EngineConfig(engine="sglang", drafter=drafter, **kw)


CHAIN = ["--speculative-num-steps", "3", "--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", "4"]


@pytest.mark.parametrize(
    ("drafter", "draft_model", "spec"),
    [
        ("none", None, []),
        ("ngram", None, ["--speculative-algorithm", "NGRAM", "--speculative-num-draft-tokens", "4",
                         "--speculative-ngram-max-bfs-breadth", "1"]),
        ("draft", "org/small", ["--speculative-algorithm", "STANDALONE", "--speculative-draft-model-path", "org/small",
                                *CHAIN]),
        ("eagle", "org/e", ["--speculative-algorithm", "EAGLE", "--speculative-draft-model-path", "org/e", *CHAIN]),
        ("eagle3", "org/e3", ["--speculative-algorithm", "EAGLE3", "--speculative-draft-model-path", "org/e3", *CHAIN]),
        ("mtp", None, ["--speculative-algorithm", "NEXTN", *CHAIN]),
    ],
)
@pytest.mark.parametrize(("flags", "graph_flag"), [(NEW_FLAGS, "--cuda-graph-max-bs-decode"),
                                                   (OLD_FLAGS, "--cuda-graph-max-bs")])
def test_argv_for_every_drafter_and_version(drafter, draft_model, spec, flags, graph_flag):
    config = _config(drafter, draft_model=draft_model, draft_length=3, max_batch_size=32,
                     engine_args=("--tp-size", "2"))
    argv = build_argv(config, port=7000, command=["python", "-m", "sglang.launch_server"], flags=flags)
    assert argv == ["python", "-m", "sglang.launch_server", "--model-path", "org/target", "--host", "127.0.0.1",
                    "--port", "7000", "--disable-radix-cache", "--max-running-requests", "32", graph_flag, "32",
                    *spec, "--tp-size", "2"]


def test_version_drift_errors_name_the_version():
    with pytest.raises(EngineError, match=r"SGLang 0\.4\.0 accepts none of the CUDA-graph batch flags"):
        cuda_graph_args(8, frozenset({"--port"}), "0.4.0")
    assert cuda_graph_args(8, None, None) == []  # probe failed: leave SGLang's default
    with pytest.raises(EngineError, match=r"SGLang 0\.5\.9 does not accept --cuda-graph-max-bs-decode"):
        build_argv(_config("none", engine_args=("--cuda-graph-max-bs-decode", "4")), port=1, command=["x"],
                   flags=OLD_FLAGS, version="0.5.9")
    with pytest.raises(UsageError, match="needs --draft-model"):
        build_argv(_config("eagle3"), port=1, command=["x"])


@pytest.mark.parametrize(("version", "present", "absent"), [("0.5.9", "--cuda-graph-max-bs", "--cuda-graph-max-bs-decode"),
                                                            ("0.5.23", "--cuda-graph-max-bs-decode", "--cuda-graph-max-bs")])
def test_probe_reads_the_installed_flags(monkeypatch, version, present, absent):
    monkeypatch.setenv("FAKE_ENGINE_VERSION", version)
    flags = probe_flags(FAKE_CMD, timeout_s=60)
    assert present in flags and absent not in flags and "--speculative-num-draft-tokens" in flags
    assert probe_flags([sys.executable, "-c", "import sys; sys.exit(1)"]) is None


def _engine(tmp_path, monkeypatch, version, drafter="eagle3", mode="ok", **kw) -> SGLangEngine:
    monkeypatch.setenv("SPEEDBENCH_SGLANG_CMD", shlex.join(FAKE_CMD))
    monkeypatch.setenv("FAKE_ENGINE_VERSION", version)
    monkeypatch.setenv("FAKE_ENGINE_MODE", mode)
    monkeypatch.setenv("FAKE_ENGINE_ARGV_FILE", str(tmp_path / "argv.json"))
    monkeypatch.setenv("FAKE_ENGINE_GROUND_TRUTH", str(tmp_path / "truth.jsonl"))
    monkeypatch.setenv("SPEEDBENCH_NVIDIA_SMI", "")
    kw.setdefault("draft_model", "org/e3" if drafter in ("eagle3", "eagle", "draft") else None)
    return SGLangEngine(_config(drafter, **kw), tmp_path / "logs")


@pytest.mark.parametrize(("version", "graph_flag", "mode"), [("0.5.9", "--cuda-graph-max-bs", "slow_start"),
                                                             ("0.5.23", "--cuda-graph-max-bs-decode", "ok")])
def test_launch_counters_and_teardown_across_versions(tmp_path, monkeypatch, version, graph_flag, mode):
    monkeypatch.setenv("FAKE_ENGINE_DELAY", "1.0")
    monkeypatch.setenv("FAKE_ENGINE_WORKER", "1")
    engine = _engine(tmp_path, monkeypatch, version, mode=mode, draft_length=3, max_batch_size=2)
    engine.start()
    try:
        info = engine.info()
        received = json.loads((tmp_path / "argv.json").read_text())
        assert info["launch_command"].endswith(shlex.join(received))
        assert received[received.index(graph_flag) + 1] == "2" and info["flags_probed"] is True
        assert info["version"] == version and info["speculative_algorithm"] == "EAGLE3"
        if mode == "slow_start":
            assert info["ready_s"] >= 0.9
        items = [WorkItem(f"p{i}", "math", ("x",), tuple(range(i, i + 25))) for i in range(3)]
        run = run_load(engine, items, LoadSpec(batch_size=2, max_new_tokens=24, temperature=0.0, warmup=0))
    finally:
        engine.stop()
    truth = sorted(tuple(t["steps"]) for t in map(json.loads, (tmp_path / "truth.jsonl").read_text().splitlines()))
    assert sorted(tuple(r.chunk_tokens[1:]) for r in run.measured) == truth
    for r in run.measured:  # final meta_info counters (0.5.9 and 0.5.23 spellings) reach the record
        steps = len(r.chunk_tokens) - 1
        assert r.counters["decode_steps"] == steps and r.counters["accepted"] == sum(r.chunk_tokens[1:]) - steps
        assert r.counters["drafted"] == 3 * steps
    log_text = Path(info["log"]).read_text()
    worker = int(log_text.split("worker pid ")[1].split()[0])
    assert not pid_alive(worker) and process_group_members(engine._server.pid) == []


def test_crash_at_startup_reports_log_tail(tmp_path, monkeypatch):
    engine = _engine(tmp_path, monkeypatch, "0.5.23", mode="crash_start", ready_timeout_s=600)
    with pytest.raises(EngineError) as err:
        engine.start()
    assert "exited with code 1 during startup" in str(err.value) and "CUDA out of memory" in str(err.value)


def test_not_installed_hint(monkeypatch):
    monkeypatch.delenv("SPEEDBENCH_SGLANG_CMD", raising=False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(EngineNotInstalled, match="pip install"):
        SGLANG_SPEC.check_installed()
