"""Engine state between cases: reset before each case, warmup off the measured prompts, the
repeat check, and what the results and the summary say about it.

The fake SGLang's `--memory` behaves like the real NGRAM corpus (measured on SGLang 0.5.23:
the same prompts at batch size 1, then 4, AL 1.18 -> 3.91 without a reset): a prompt served
since the last /flush_cache has every draft accepted. With acceptance 0.5,0.2,0.1 an honest
AL is about 1.6, a remembered one 4.0, so the two are far apart.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from conftest import SUITE

from pytest_speedbench.engines.base import EngineConfig
from pytest_speedbench.engines.sglang import SGLangEngine

FAKE_LAUNCH = f"{sys.executable} {Path(__file__).parent / 'fakes' / 'fake_sglang_launch.py'}"
ACCEPT = "0.5,0.2,0.1"
FULL_AL = 4.0  # 1 + gamma: every draft accepted


@pytest.fixture
def suite(pytester: pytest.Pytester, tiny_tokenizer_dir: Path, prompts_file: Path):
    pytester.makepyfile(test_speedbench=SUITE)

    def run(*args: str) -> tuple[pytest.RunResult, dict[str, dict]]:
        out = pytester.path / f"out-{time.monotonic_ns()}.json"
        result = pytester.runpytest(
            f"--tokenizer={tiny_tokenizer_dir}", f"--dataset={prompts_file}", "--num-prompts=2",
            "--split=qualitative", "--temperature=0", "--engine=sglang", "--drafter=ngram", "--output-len=32",
            f"--speedbench-json={out}", "-p", "no:cacheprovider", *args)
        entries = {b["param"]: b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]} \
            if out.exists() else {}
        return result, entries

    return run


BS1, BS4 = "sglang-ngram-qualitative-bs1-t0", "sglang-ngram-qualitative-bs4-t0"


def test_flush_before_each_case_keeps_batch_size_4_honest(suite, fake_sglang):
    server = fake_sglang("--algorithm", "NGRAM", "--accept", ACCEPT, "--memory", "--step-ms", "0")
    result, entries = suite(f"--server-url={server.url}", "--batch-size=1,4")
    result.assert_outcomes(passed=2)
    for case in (BS1, BS4):
        reset = entries[case]["state_reset"]
        assert reset["method"] == "flush_cache" and reset["ok"] and "NGRAM corpus" in reset["cleared"]
        assert entries[case]["warnings"] == []
        assert entries[case]["acceptance_length"] < 2.5  # nothing remembered
    assert "WARNING" not in result.stdout.str()


def test_attached_server_without_reset_is_flagged_and_inflates(suite, fake_sglang):
    """The issue's own reproduction: an attached NGRAM server that cannot be flushed."""
    server = fake_sglang("--algorithm", "NGRAM", "--accept", ACCEPT, "--memory", "--no-flush", "--step-ms", "0")
    result, entries = suite(f"--server-url={server.url}", "--batch-size=1,4")
    result.assert_outcomes(passed=2)
    assert entries[BS1]["acceptance_length"] < 2.5
    single_turn_al = entries[BS4]["acceptance_length"]
    assert single_turn_al > 3.0  # batch size 4 replays batch size 1's answers
    for case in (BS1, BS4):
        assert entries[case]["state_reset"]["method"] == "none" and not entries[case]["state_reset"]["ok"]
        [warning] = entries[case]["warnings"]
        assert "attached sglang server" in warning and "inflate" in warning
    result.stdout.fnmatch_lines([f"WARNING {BS4}: attached sglang server at {server.url}*"])


def test_repeat_check_fails_when_the_engine_remembers(suite, fake_sglang):
    server = fake_sglang("--algorithm", "NGRAM", "--accept", ACCEPT, "--memory", "--no-flush", "--step-ms", "0")
    result, entries = suite(f"--server-url={server.url}", "--batch-size=1", "--speedbench-repeat-check")
    result.assert_outcomes(failed=1)
    check = entries[BS1]["repeat_check"]
    assert check["verdict"] == "fail" and check["second"] > check["first_ci95"][1]
    assert "repeat check: AL moved from" in result.stdout.str()
    assert entries[BS1]["gate"]["verdict"] == "fail"


def test_repeat_check_passes_after_a_reset(suite, fake_sglang):
    server = fake_sglang("--algorithm", "NGRAM", "--accept", ACCEPT, "--memory", "--step-ms", "0")
    result, entries = suite(f"--server-url={server.url}", "--batch-size=1", "--speedbench-repeat-check")
    result.assert_outcomes(passed=1)
    check = entries[BS1]["repeat_check"]
    assert check["verdict"] == "pass" and check["reset"]["method"] == "flush_cache"
    lo, hi = check["first_ci95"]
    assert lo <= check["second"] <= hi


def test_warmup_stays_off_the_measured_prompts(suite, fake_sglang):
    """Without a reset, a warmup on a measured prompt would make that prompt's request replay;
    the default warmup uses a prompt that is not measured, so the first case stays honest."""
    server = fake_sglang("--algorithm", "NGRAM", "--accept", ACCEPT, "--memory", "--no-flush", "--step-ms", "0")
    _, outside = suite(f"--server-url={server.url}", "--batch-size=1", "--warmup=2")
    warm = outside[BS1]["warmup_prompts"]
    assert warm["source"] == "outside" and len(warm["prompt_ids"]) == 2
    measured = {"t-0", "t-1", "t-2", "t-3", "t-4", "t-5"} - set(warm["prompt_ids"])
    assert len(measured) == 4  # 2 per category measured, the other 2 warmed
    assert outside[BS1]["acceptance_length"] < 2.5

    server2 = fake_sglang("--algorithm", "NGRAM", "--accept", ACCEPT, "--memory", "--no-flush", "--step-ms", "0")
    _, inside = suite(f"--server-url={server2.url}", "--batch-size=1", "--warmup=2", "--warmup-prompts=measured")
    assert inside[BS1]["warmup_prompts"]["source"] == "measured"
    assert any("warmup used measured prompts" in w for w in inside[BS1]["warnings"])
    assert inside[BS1]["acceptance_length"] > outside[BS1]["acceptance_length"]


def test_launched_engine_without_a_reset_call_is_restarted(tmp_path, monkeypatch):
    """An engine whose drafter keeps state and that has no reset call: a fresh launch serves
    the first case, and every later case gets a new server process."""
    monkeypatch.setenv("SPEEDBENCH_SGLANG_CMD", FAKE_LAUNCH)
    monkeypatch.setattr(SGLangEngine, "reset_call", lambda self: None)
    engine = SGLangEngine(EngineConfig("sglang", "ngram", model="fake/model", ready_timeout_s=60), tmp_path)
    engine.start()
    try:
        first_pid = engine._server.pid  # noqa: SLF001
        assert engine.reset_state().method == "fresh start"
        second = engine.reset_state()
        assert second.method == "restart" and second.ok
        assert engine._server.pid != first_pid and engine._server.alive  # noqa: SLF001
        assert engine.info()["restarts"] == 1
    finally:
        engine.stop()


def test_attached_engine_with_stateless_drafter_needs_no_reset(tmp_path, fake_sglang, monkeypatch):
    server = fake_sglang("--algorithm", "EAGLE3", "--no-flush", "--step-ms", "0")
    engine = SGLangEngine(EngineConfig("sglang", "eagle3", server_url=server.url), tmp_path)
    engine.start()
    reset = engine.reset_state()
    assert reset.method == "not needed" and reset.ok and reset.warning is None


def test_flush_waits_for_a_busy_server_to_drain(tmp_path, fake_sglang):
    """/flush_cache only runs while idle: the reset waits for the request in flight."""
    import threading
    import urllib.request

    server = fake_sglang("--algorithm", "NGRAM", "--accept", ACCEPT, "--step-ms", "20")
    body = json.dumps({"input_ids": [1, 2], "stream": True, "sampling_params": {"max_new_tokens": 60}}).encode()
    request = urllib.request.Request(server.url + "/generate", data=body, headers={"Content-Type": "application/json"})
    done: list[float] = []
    worker = threading.Thread(target=lambda: (urllib.request.urlopen(request, timeout=30).read(),
                                              done.append(time.monotonic())))
    worker.start()
    time.sleep(0.3)
    busy = urllib.request.Request(server.url + "/flush_cache", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(busy, timeout=5)
    assert refused.value.code == 400  # busy and no timeout: refused at once, like 0.5.23
    engine = SGLangEngine(EngineConfig("sglang", "ngram", server_url=server.url), tmp_path)
    reset = engine.reset_state()
    worker.join()
    # the server refuses a flush while busy (above), so an accepted flush came after the drain
    # (comparing the two threads' clocks raced under load: the reader thread ran late)
    assert reset.method == "flush_cache" and reset.ok
    assert done  # and the request in flight was served to its end


def test_server_info_facts_in_attach_mode(tmp_path, fake_sglang):
    server = fake_sglang("--algorithm", "NGRAM", "--accept", ACCEPT, "--version", "0.5.23")
    engine = SGLangEngine(EngineConfig("sglang", "ngram", server_url=server.url), tmp_path)
    engine.start()
    facts = engine.info()["server_info"]
    assert facts["version"] == "0.5.23" and facts["speculative_algorithm"] == "NGRAM"
    assert facts["speculative_num_draft_tokens"] == 4 and facts["attention_backend"] == "fake"
    assert "internal_states" not in facts  # only the facts, not ~480 server args
