"""Bad input that options cannot catch: missing dataset, placeholder rows, missing tokenizer,
unwritable results folder, disk full while saving. (Bad option values and a malformed
speedbench.yaml are usage errors covered in test_plugin_sglang.py.)

Each fault must fail the affected cases naming the cause, and what was already measured must
stay in the results file, whole, with no temporary file beside it.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import FAKES, SUITE, free_port

from pytest_speedbench.data.placeholders import PLACEHOLDER_MARKER

CASES = ("sglang-eagle3-qualitative-bs1-t0", "sglang-eagle3-qualitative-bs2-t0")


@pytest.fixture
def server_url():
    """A healthy fake SGLang server, polled with urllib: httpx state does not survive the
    sys.modules snapshots of in-process pytester runs."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(FAKES / "fake_sglang.py"), "--port", str(port), "--step-ms", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "fake SGLang server did not start"
            time.sleep(0.1)
    yield url
    proc.kill()
    proc.wait(5)


@pytest.fixture
def suite(pytester: pytest.Pytester, tiny_tokenizer_dir: Path, prompts_file: Path, server_url: str):
    pytester.makepyfile(test_speedbench=SUITE)

    def run(*args: str, tokenizer: Path | str = tiny_tokenizer_dir, dataset: Path | str = prompts_file,
            out: Path | None = None) -> tuple[pytest.RunResult, Path]:
        out = out or pytester.path / "out.json"
        result = pytester.runpytest(
            f"--tokenizer={tokenizer}", f"--dataset={dataset}", "--num-prompts=1", "--split=qualitative",
            "--temperature=0", "--warmup=0", "--output-len=8", "--engine=sglang", "--drafter=eagle3",
            f"--server-url={server_url}", "--batch-size=1,2", f"--speedbench-json={out}",
            "-p", "no:cacheprovider", "-W", "ignore", *args,
        )
        return result, out

    return run


def recorded(out: Path) -> dict[str, dict]:
    return {b["param"]: b for b in json.loads(out.read_text())["benchmarks"]}


def assert_every_case_failed_with(result: pytest.RunResult, out: Path, message: str) -> None:
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) + outcomes.get("errors", 0) == 2, outcomes
    assert message in result.stdout.str()
    entries = recorded(out)
    assert set(entries) == set(CASES)
    for entry in entries.values():
        gate = entry["extra_info"]["gate"]
        assert gate["verdict"] == "fail" and message in " ".join(gate["reasons"]), gate


def assert_usage_error_before_any_case(result: pytest.RunResult, out: Path, message: str) -> None:
    """Bad paths stop the session up front: no engine is touched, no case runs, nothing is written."""
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.outlines
    assert message in result.stderr.str()
    assert not out.exists()


def test_missing_dataset(suite, pytester):
    missing = pytester.path / "no-such-prompts.jsonl"
    result, out = suite(dataset=missing)
    assert_usage_error_before_any_case(result, out, f"dataset '{missing}' is not a file or directory; valid forms:")


def test_placeholder_rows_are_refused_with_the_fix(suite, pytester):
    rows = [{"question_id": f"p-{i}", "category": "writing", "turns": [PLACEHOLDER_MARKER + "\n\nx"],
             "source": "sharegpt", "src_id": str(i)} for i in range(2)]
    path = pytester.path / "placeholders.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result, out = suite(dataset=path)
    assert_every_case_failed_with(result, out, "2 of 2 rows of")
    assert "are placeholders whose turns must be fetched from their original sources: sharegpt (2)" in \
        result.stdout.str()
    assert "speedbench prepare" in result.stdout.str()


def test_missing_tokenizer(suite, pytester):
    missing = pytester.path / "no-such-tokenizer"
    result, out = suite(tokenizer=missing)
    assert_usage_error_before_any_case(result, out, f"--tokenizer: {missing} does not exist")


def test_results_folder_not_writable(suite, pytester):
    blocker = pytester.path / "not-a-folder"
    blocker.write_text("a file where the results folder should be\n")
    result, out = suite(out=blocker / "out.json")
    assert_usage_error_before_any_case(result, out, f"cannot write results to {blocker}: [Errno 17] File exists")
    assert blocker.read_text() == "a file where the results folder should be\n"


def test_disk_full_while_saving_keeps_the_measured_results(suite, pytester, monkeypatch):
    """The second save hits ENOSPC: the first case's results stay whole, no temp file is left,
    and the second case fails naming the cause."""
    import pytest_speedbench.results.document as results

    real_fsync, saves = results.os.fsync, []

    def fsync(fd: int) -> None:
        saves.append(fd)
        if len(saves) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(results.os, "fsync", fsync)
    result, out = suite("--speedbench-autosave=off")  # one file per save, so the second save is case 2's
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 1 and outcomes.get("failed", 0) + outcomes.get("errors", 0) == 1, outcomes
    assert f"cannot write results to {out}: [Errno 28] No space left on device" in result.stdout.str()
    entries = recorded(out)  # valid JSON: the first case, measured and saved before the disk filled
    assert list(entries) == [CASES[0]] and entries[CASES[0]]["extra_info"]["num_requests"] > 0
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".out.json")] == []
