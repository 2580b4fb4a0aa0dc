"""Stream faults through the whole plugin: each one fails its test with a message naming the
cause, is recorded in the results file with its verdict and reason, and the next case runs.

The fake SGLang server injects the fault into request 0 only (`--fault-request 0`), so the
first case (batch size 1) meets it and the second (batch size 2) is measured normally,
except after a crash, where the server is gone and the second case must fail as well,
naming the refused connection.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import FAKES, SUITE, default_signals


REQUEST_TIMEOUT_S = 2.0


@pytest.fixture
def suite(pytester: pytest.Pytester, tiny_tokenizer_dir: Path, prompts_file: Path):
    pytester.makepyfile(test_speedbench=SUITE)

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest(
            f"--tokenizer={tiny_tokenizer_dir}", f"--dataset={prompts_file}", "--num-prompts=3",
            "--split=qualitative", "--temperature=0", "--warmup=0", "--output-len=16",
            "--engine=sglang", "--batch-size=1,2", "-p", "no:cacheprovider",
            "-p", "no:randomly", *args,
        )

    return run


def entries(path: Path) -> dict[str, dict]:
    doc = json.loads(path.read_text())
    return {b["param"]: b for b in doc["benchmarks"]}


# drafter slot -> (fault injected into that server's request 0, what the failing test says)
# Every server is attached under its own drafter name, so one session meets every fault.
STREAM_FAULTS = {
    "none": ("no_done", "stream ended without a final event or [DONE]"),
    "ngram": ("http500", 'HTTP 500 from {url}/generate: {{"error": "injected internal error"}}'),
    "draft": ("malformed", "malformed SGLang event JSON"),
    "eagle": ("backwards", "went backwards"),  # seen as a shrinking stream or a short length finish
    "eagle3": ("hang", "no event from {url}/generate for {timeout:g} s (request timeout) after 2 events"),
    "mtp": ("crash_midstream", "connection to {url}/generate lost after 2 events: server closed the connection"),
}


def case_id(drafter: str, bs: int) -> str:
    return f"sglang-{drafter}-qualitative-bs{bs}-t0"


@pytest.fixture
def faulty_session(suite, fake_sglang, pytester):
    """One session, six servers, one fault each on request 0; batch sizes 1 then 2."""
    servers = {d: fake_sglang("--fault", fault, "--fault-request", "0", "--step-ms", "1")
               for d, (fault, _) in STREAM_FAULTS.items()}
    out = pytester.path / "out.json"
    urls = ",".join(f"{d}={s.url}" for d, s in servers.items())
    result = suite(f"--server-url={urls}", "--drafter=" + ",".join(STREAM_FAULTS), f"--speedbench-json={out}",
                   f"--request-timeout={REQUEST_TIMEOUT_S:g}", "--durations=0", "-vv", "-W", "ignore",
                   "--speedbench-rounds=1")  # one AR + one SD pass per SD case keeps the timing budget
    return result, servers, entries(out)


def test_stream_faults_fail_their_case_name_the_cause_and_the_session_goes_on(faulty_session, pytester):
    result, servers, recorded = faulty_session
    # the crashed server takes its second case down too; every other server recovers
    result.assert_outcomes(failed=len(STREAM_FAULTS) + 1, passed=len(STREAM_FAULTS) - 1)
    assert set(recorded) == {case_id(d, bs) for d in STREAM_FAULTS for bs in (1, 2)}  # every case recorded
    text = result.stdout.str()
    for drafter, (fault, message) in STREAM_FAULTS.items():
        url = servers[drafter].url
        message = message.format(url=url, timeout=REQUEST_TIMEOUT_S)
        assert re.search(rf"{case_id(drafter, 1)}: \d+ of \d+ requests failed; first: \S+ turn 0: ", text), fault
        assert message in text, fault
        gate = recorded[case_id(drafter, 1)]["extra_info"]["gate"]
        assert gate["verdict"] == "fail" and any(message in r for r in gate["reasons"]), fault
        second = recorded[case_id(drafter, 2)]["extra_info"]["gate"]
        if fault == "crash_midstream":
            assert second["verdict"] == "fail"
            assert any(f"cannot connect to {url}/generate" in r for r in second["reasons"])
        else:
            assert second["verdict"] != "fail", (fault, second)
    assert not [p.name for p in pytester.path.iterdir() if p.name.startswith(".out.json")]  # no temp files
    # hang -> failure: the hang starts after the second event; the measuring fixture's setup
    # phase (where speedbench_run measures) is the timeout plus the case's other (1 ms/step)
    # requests and the attach probe: at least the timeout, and far below the fake's 3600 s hang
    # (on a quiet machine under timeout + 2 s; 4.97 s seen with six jobs on 2 cores)
    name = f"setup    test_speedbench.py::test_speculative_decoding[{case_id('eagle3', 1)}]"
    call = [line for line in result.outlines if line.strip().endswith(name)]
    assert call, result.outlines
    seconds = float(call[0].split("s", 1)[0])
    assert REQUEST_TIMEOUT_S <= seconds < REQUEST_TIMEOUT_S + 60.0, seconds
    print(f"hang -> failure: {seconds:.2f} s with --request-timeout={REQUEST_TIMEOUT_S:g}")


def test_missing_counters_are_named_not_silently_used(suite, fake_sglang, pytester):
    """An SD server that reports no counters: AL comes from chunks and the results say why."""
    server = fake_sglang("--fault", "no_counters", "--step-ms", "1")
    out = pytester.path / "out.json"
    result = suite(f"--server-url={server.url}", f"--speedbench-json={out}", "--batch-size=1", "--drafter=eagle3",
                   "-W", "ignore")
    result.assert_outcomes(passed=1)
    extra = entries(out)[case_id("eagle3", 1)]["extra_info"]
    assert extra["acceptance_length_counters"] is None
    assert extra["al_source"] == "chunks"
    assert extra["al_source_reason"] == "no_engine_counters"
    assert "no engine SD counters" in extra["al_source_detail"]


# -- signals: Ctrl-C and SIGTERM in the middle of a run ---------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_run_keeps_measured_results_and_leaves_no_process(signum, pytester, tiny_tokenizer_dir,
                                                                     prompts_file, reap):
    """A launched (fake) engine, case 1 measured and saved, case 2 slow: the signal arrives
    during case 2. pytest must exit, the results file must hold case 1 whole, and no process
    carrying this run's marker (pytest, the server, its worker) may be left."""
    pytester.makepyfile(test_speedbench=SUITE)
    out = pytester.path / "out.json"
    marker = f"faults-{uuid.uuid4().hex}"
    env = {**os.environ, "SPEEDBENCH_FAULT_MARKER": marker, "SPEEDBENCH_NVIDIA_SMI": "",
           "SPEEDBENCH_SGLANG_CMD": shlex.join([sys.executable, str(FAKES / "fake_sglang_launch.py")]),
           "FAKE_ENGINE_WORKER": "1", "FAKE_ENGINE_STEP_MS": "150"}
    cmd = [sys.executable, "-m", "pytest", f"--tokenizer={tiny_tokenizer_dir}", f"--dataset={prompts_file}",
           "--num-prompts=1", "--split=qualitative", "--temperature=0", "--warmup=0", "--output-len=4",
           "--engine=sglang", "--drafter=none", "--model=org/target", "--batch-size=1,2", "--ready-timeout=120",
           f"--speedbench-json={out}", "-p", "no:cacheprovider", "-W", "ignore", "test_speedbench.py"]
    reap(marker=marker)
    proc = subprocess.Popen(cmd, cwd=pytester.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=default_signals)
    try:
        deadline = time.monotonic() + 120
        while not out.exists():  # case 1 measured and saved
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
            time.sleep(0.1)
        proc.send_signal(signum)
        output = proc.communicate(timeout=60)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, output
    saved = json.loads(out.read_text())
    entries = saved["benchmarks"]  # whole, valid JSON
    assert entries[0]["param"] == "sglang-none-qualitative-bs1-t0" and entries[0]["extra_info"]["num_requests"] > 0
    # never complete, so `latest` passes over it: Ctrl-C is recorded, SIGTERM leaves "running"
    status = saved["speedbench"]["run"]["status"]
    assert status == ("interrupted" if signum == signal.SIGINT else "running"), (status, output)
    assert [p.name for p in pytester.path.iterdir() if p.name.startswith(".out.json")] == []
    time.sleep(0.5)
    leftovers = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "environ").read_bytes():
                state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
                if state not in ("Z", "X"):
                    leftovers.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    assert leftovers == [], leftovers


def test_pytest_timeout_inside_a_case_is_recorded_and_the_session_goes_on(suite, fake_sglang, pytester):
    """pytest-timeout (signal method) fires during a hung request whose own timeout is longer."""
    # import the tokenizer stack first, so the timeout cannot fire inside a slow torch import
    # (that leaves torch half-imported for the rest of the session)
    from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: F401

    server = fake_sglang("--fault", "hang", "--fault-request", "0", "--step-ms", "1")
    out = pytester.path / "out.json"
    result = suite(f"--server-url={server.url}", "--drafter=eagle3", f"--speedbench-json={out}",
                   "--request-timeout=60", "--timeout=4", "--timeout-method=signal", "-W", "ignore")
    result.assert_outcomes(passed=1, errors=1)
    assert "Timeout (>4.0s) from pytest-timeout" in result.stdout.str()
    recorded = entries(out)
    gate = recorded[case_id("eagle3", 1)]["extra_info"]["gate"]
    assert gate["verdict"] == "fail" and "Timeout (>4.0s) from pytest-timeout" in " ".join(gate["reasons"])
    assert recorded[case_id("eagle3", 2)]["extra_info"]["gate"]["verdict"] != "fail"
