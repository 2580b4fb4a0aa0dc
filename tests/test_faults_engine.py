"""Engine faults: startup crash, never ready, slow start, port taken, parser inconsistencies.

Launched engines are the SGLang launcher fake (tests/fakes/fake_sglang_launch.py, faults from
FAKE_ENGINE_* variables) and, when it is built, the real llama-server. Every launched process
inherits a unique SPEEDBENCH_FAULT_MARKER variable, so "nothing left behind" is asserted from
the process table (/proc/*/environ), workers included, not from our own bookkeeping.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import SUITE

from pytest_speedbench.engines.base import EngineConfig
from pytest_speedbench.engines.sglang import SGLangEngine, SGLangParser
from pytest_speedbench.errors import EngineError, EngineNotInstalled, RequestError

FAKE = Path(__file__).resolve().parent / "fakes" / "fake_sglang_launch.py"
#: a crash at startup is reported this soon (the readiness timeouts are 600 s: a loaded machine is
#: slower, never that slow); the figure printed is the measurement
STARTUP_GOAL_S = 30.0



def marked_processes(marker: str) -> list[tuple[int, str]]:
    """Live processes (other than this one) whose environment carries `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() not in (entry / "environ").read_bytes():
                continue
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state not in ("Z", "X"):
            found.append((int(entry.name), cmdline))
    return found


@pytest.fixture
def marker(monkeypatch) -> str:
    """A unique variable every process launched by this test inherits; none may outlive it."""
    value = f"faults-{uuid.uuid4().hex}"
    monkeypatch.setenv("SPEEDBENCH_FAULT_MARKER", value)
    yield value
    assert marked_processes(value) == []


@pytest.fixture
def fake_launcher(monkeypatch, tmp_path, marker):
    """Point the SGLang engine at the fake launcher; returns a setter for its fault mode."""
    monkeypatch.setenv("SPEEDBENCH_SGLANG_CMD", shlex.join([sys.executable, str(FAKE)]))
    monkeypatch.setenv("SPEEDBENCH_NVIDIA_SMI", "")
    monkeypatch.setenv("FAKE_ENGINE_WORKER", "1")  # a forked worker that teardown must reach
    monkeypatch.setenv("FAKE_ENGINE_ARGV_FILE", str(tmp_path / "argv.json"))

    def mode(value: str, **env: str) -> Path:
        monkeypatch.setenv("FAKE_ENGINE_MODE", value)
        for key, v in env.items():
            monkeypatch.setenv(key, v)
        return tmp_path / "argv.json"

    return mode


def _engine(tmp_path: Path, **kw) -> SGLangEngine:
    kw.setdefault("model", "org/target")
    kw.setdefault("ready_timeout_s", 120.0)
    return SGLangEngine(EngineConfig(engine="sglang", drafter="none", **kw), tmp_path / "logs")


# -- launched engine, engine API ---------------------------------------------------------------


def test_startup_crash_fails_at_once_with_log_tail(fake_launcher, tmp_path, marker):
    started_file = fake_launcher("crash_start")
    engine = _engine(tmp_path, ready_timeout_s=600)
    with pytest.raises(EngineError) as err:
        engine.start()
    caught = time.time()
    # the fake writes its argv file right before it crashes: that is the fault's time
    fault_to_message = caught - started_file.stat().st_mtime
    message = str(err.value)
    assert "sglang[sglang-none] exited with code 1 during startup" in message
    assert "--- engine log tail ---" in message and "CUDA out of memory" in message
    assert fault_to_message < STARTUP_GOAL_S, fault_to_message
    print(f"startup crash -> EngineError: {fault_to_message:.2f} s (readiness timeout 600 s)")


def test_never_ready_fails_at_the_readiness_timeout_and_kills_the_group(fake_launcher, tmp_path, marker):
    fake_launcher("hang_start")
    # 8 s: the fake must have started and logged before the timeout, also on a loaded machine
    engine = _engine(tmp_path, ready_timeout_s=8.0)
    t0 = time.monotonic()
    with pytest.raises(EngineError) as err:
        engine.start()
    elapsed = time.monotonic() - t0
    message = str(err.value)
    assert "was not ready after the 8 s readiness timeout (raise it with --ready-timeout" in message
    assert "Loading model weights ... (hangs)" in message  # the log tail says where it stuck
    assert elapsed < 8.0 + 30.0  # --help probe + timeout + teardown on a loaded machine
    assert marked_processes(marker) == []  # server and its worker are gone right away


def test_port_already_taken_names_the_port(fake_launcher, tmp_path, monkeypatch, marker):
    """Another process holds the port picked for the engine (the free-port race)."""
    fake_launcher("ok")
    with socket.socket() as holder:
        # bound, not listening: the launch fails on bind. (A holder that listens but never
        # answers HTTP stalls the readiness probe for its 60 s read timeout: see
        # docs/troubleshooting.md.)
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        monkeypatch.setattr("pytest_speedbench.engines.sglang.free_port", lambda: port)
        engine = _engine(tmp_path)
        with pytest.raises(EngineError) as err:
            engine.start()
    message = str(err.value)
    assert "exited with code 1 during startup" in message
    assert f"('127.0.0.1', {port})" in message and "address already in use" in message


# -- launched engine, through the plugin --------------------------------------------------------


@pytest.fixture
def launched_suite(pytester: pytest.Pytester, tiny_tokenizer_dir: Path, prompts_file: Path):
    pytester.makepyfile(test_speedbench=SUITE)
    out = pytester.path / "out.json"

    def run(*args: str) -> tuple[pytest.RunResult, dict]:
        result = pytester.runpytest(
            f"--tokenizer={tiny_tokenizer_dir}", f"--dataset={prompts_file}", "--num-prompts=1",
            "--split=qualitative", "--temperature=0", "--warmup=0", "--output-len=8", "--engine=sglang",
            "--drafter=none", "--model=org/target", "--batch-size=1,2", f"--speedbench-json={out}",
            "-p", "no:cacheprovider", "-W", "ignore", *args,
        )
        doc = json.loads(out.read_text()) if out.exists() else {"benchmarks": []}
        return result, {b["param"]: b for b in doc["benchmarks"]}

    return run


def test_startup_crash_errors_every_case_of_the_instance_and_records_the_cause(fake_launcher, launched_suite):
    fake_launcher("crash_start")
    result, entries = launched_suite("--ready-timeout=600")
    result.assert_outcomes(errors=2)  # one start attempt, both cases of the instance error
    text = result.stdout.str()
    assert "exited with code 1 during startup" in text and "CUDA out of memory" in text
    assert text.count("exited with code 1 during startup (log:") >= 1
    assert set(entries) == {"sglang-none-qualitative-bs1-t0", "sglang-none-qualitative-bs2-t0"}
    for entry in entries.values():
        gate = entry["extra_info"]["gate"]
        assert gate["verdict"] == "fail"
        assert "exited with code 1 during startup" in gate["reasons"][0], gate


def test_slow_engine_becomes_ready_and_is_measured(fake_launcher, launched_suite):
    fake_launcher("slow_start", FAKE_ENGINE_DELAY="3")
    result, entries = launched_suite("--ready-timeout=120")
    result.assert_outcomes(passed=2)
    assert {e["extra_info"]["gate"]["verdict"] for e in entries.values()} <= {"pass", "skip"}
    assert all(e["extra_info"]["num_requests"] > 0 for e in entries.values())


# -- parser-level inconsistencies ----------------------------------------------------------------


def _event(ids, completion_tokens, finish=None, **meta) -> bytes:
    meta = {"completion_tokens": completion_tokens, "finish_reason": finish, **meta}
    return json.dumps({"output_ids": ids, "meta_info": meta}).encode()


def test_tokens_going_backwards_is_a_request_error():
    parser = SGLangParser()
    parser.parse(_event([1], 1))
    parser.parse(_event([1, 2, 3], 3))
    with pytest.raises(RequestError, match="SGLang output_ids went backwards: 2 ids after 3 were seen"):
        parser.parse(_event([1, 2], 2))


def test_length_finish_with_missing_tokens_is_a_request_error():
    parser = SGLangParser()
    parser.parse(_event([1], 1))
    with pytest.raises(RequestError, match=r"finished for length 8 but 5 tokens arrived"):
        parser.parse(_event([1, 2, 3, 4, 5], 5, {"type": "length", "length": 8}, spec_verify_ct=2,
                            spec_num_correct_drafts=2, spec_num_proposed_drafts=6))


def test_more_accepted_than_proposed_drafts_is_a_request_error():
    parser = SGLangParser()
    parser.parse(_event([1], 1))
    with pytest.raises(RequestError, match="SGLang counters inconsistent: 7 accepted drafts > 6 proposed"):
        parser.parse(_event([1, 2, 3, 4], 4, {"type": "length", "length": 4}, spec_verify_ct=2,
                            spec_num_correct_drafts=7, spec_num_proposed_drafts=6))


# -- the real llama-server -------------------------------------------------------------------------


def _llama_or_skip() -> Path:
    from pytest_speedbench.engines import llama_build

    try:
        return llama_build.find_llama_server()
    except EngineNotInstalled as exc:
        pytest.skip(f"llama-server not built (run `speedbench build-llama-server`): {exc}")


@pytest.mark.real_engine
def test_real_llama_server_bad_model_fails_fast_with_log_tail(tmp_path, marker):
    _llama_or_skip()
    from pytest_speedbench.engines.llamacpp import LlamaCppEngine

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 60)  # right magic, garbage header
    engine = LlamaCppEngine(EngineConfig(engine="llamacpp", drafter="none", model=str(bad),
                                         ready_timeout_s=600), tmp_path)
    t0 = time.monotonic()
    with pytest.raises(EngineError) as err:
        engine.start()
    elapsed = time.monotonic() - t0
    engine.stop()
    assert "during startup" in str(err.value) and "--- engine log tail ---" in str(err.value)
    assert elapsed < STARTUP_GOAL_S, elapsed
    print(f"llama-server bad model -> EngineError: {elapsed:.2f} s")


@pytest.mark.real_engine
def test_real_llama_server_port_taken(tmp_path, monkeypatch, marker):
    _llama_or_skip()
    from pytest_speedbench.engines.llamacpp import LlamaCppEngine

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        monkeypatch.setattr("pytest_speedbench.engines.llamacpp.free_port", lambda *a: port)
        engine = LlamaCppEngine(EngineConfig(engine="llamacpp", drafter="none", ready_timeout_s=120), tmp_path)
        with pytest.raises(EngineError) as err:
            engine.start()
        engine.stop()
    assert "during startup" in str(err.value) and "--- engine log tail ---" in str(err.value)
