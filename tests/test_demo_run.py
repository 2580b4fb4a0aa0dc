"""A run measures what the data and the machine can serve, says why it leaves the rest out, and
prepares (once) what the demo's engines need; a run that would measure nothing is a usage error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_speedbench.engines import llama_build, prepare
from pytest_speedbench.progress import CaseProgress, minutes
from pytest_speedbench.settings.matrix import expand

from conftest import SUITE


def test_buckets_the_dataset_lacks_are_not_generated_and_the_reason_names_them():
    m = expand(["hf"], ["none"], ["throughput"], ["1k", "8k", "32k"], [1], [0.0],
               configs=("qualitative", "throughput_1k", "throughput_2k"), dataset="bundled")
    assert [c.bucket for c in m.cases] == ["1k"]
    assert m.dropped == ("throughput bucket(s) 8k, 32k: dataset bundled has no throughput_8k, throughput_32k "
                         "config (buckets it has: 1k, 2k; prepare the others with `speedbench prepare`)",)
    only_big = expand(["hf"], ["none"], ["qualitative", "throughput"], ["8k"], [1], [0.0],
                      configs=("qualitative", "throughput_1k"), dataset="D")
    assert [c.split for c in only_big.cases] == ["qualitative"]
    unknown = expand(["hf"], ["none"], ["throughput"], ["8k"], [1], [0.0], configs=None)
    assert [c.bucket for c in unknown.cases] == ["8k"]  # a single file or the hub: only reading would tell


@pytest.fixture
def suite(pytester: pytest.Pytester, tiny_tokenizer_dir: Path, prompts_file: Path):
    pytester.makepyfile(test_speedbench=SUITE)

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest(f"--tokenizer={tiny_tokenizer_dir}", "-p", "no:cacheprovider", *args)

    return run


@pytest.mark.parametrize("args, message", [
    (("--engine=hf", "--drafter=eagle3"),
     "nothing to measure: the matrix is empty (hf: drafter 'eagle3' not supported (supported: none, ngram, draft))"),
    (("--engine=hf", "--batch-size=4"),
     "nothing to measure: every case is skipped (hf serves 1 request at a time; batch size 4 would report"),
    (("--engine=hf", "--split=throughput", "--bucket=8k"),
     "nothing to measure: the matrix is empty (throughput bucket(s) 8k: dataset bundled has no throughput_8k"),
])
def test_a_run_that_would_measure_nothing_is_a_usage_error(suite, args, message):
    result = suite(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_a_named_engine_that_cannot_run_stops_the_session_before_anything_starts(suite, monkeypatch):
    monkeypatch.setenv(llama_build.ENV_BINARY, "/nonexistent/llama-server")
    result = suite("--engine=llamacpp", "--drafter=none")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "SPEEDBENCH_LLAMA_SERVER='/nonexistent/llama-server' is not an executable file" in result.stderr.str()
    assert "collected" not in result.stdout.str()


def test_a_profile_engine_that_cannot_run_is_skipped_with_the_install_command(suite, pytester, monkeypatch):
    monkeypatch.setenv(llama_build.ENV_BINARY, "/nonexistent/llama-server")
    pytester.path.joinpath("speedbench.yaml").write_text(
        "profiles:\n  demo:\n    engine: [hf, llamacpp]\n    drafter: [none]\n")
    items, _ = pytester.inline_genitems(f"--tokenizer=x", "-p", "no:cacheprovider")
    skips = {item.name: [m.kwargs.get("reason") for m in item.iter_markers("skip")] for item in items}
    assert skips["test_speculative_decoding[hf-none-qualitative-bs1-t0]"] == []
    (reason,) = skips["test_speculative_decoding[llamacpp-none-qualitative-bs1-t0]"]
    assert reason.startswith("llamacpp is not available: SPEEDBENCH_LLAMA_SERVER=")
    assert "`speedbench build-llama-server`" in reason


def test_a_failed_preparation_skips_its_engine_once_with_the_reason(suite, pytester, monkeypatch, tmp_path):
    """A demo engine that is not built is built before the first test, with progress; when the
    build fails its cases are skipped with the reason, never one error per test."""
    monkeypatch.delenv(llama_build.ENV_BINARY, raising=False)
    monkeypatch.setenv("SPEEDBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(llama_build, "check_toolchain", lambda: None)
    monkeypatch.setattr(llama_build, "find_llama_server", _not_built)

    def build(**kwargs):
        kwargs["echo"].write("[ 10%] Building CXX object a.o\n")
        raise llama_build.BuildError("`cmake --build` failed with exit code 2; see build.log")

    monkeypatch.setattr(llama_build, "build", build)
    pytester.path.joinpath("speedbench.yaml").write_text(
        "profiles:\n  demo:\n    engine: [llamacpp]\n    batch_size: [1, 2]\n    drafter: [none, ngram]\n")
    result = suite("-rs")
    result.assert_outcomes(skipped=4)
    result.stdout.fnmatch_lines([
        "speedbench: llamacpp: building llama-server b* (once; ~4-8 min on 2 cores)",
        "   10% after * s",
        "speedbench: llamacpp: building llama-server b* failed: BuildError: `cmake --build` failed*",
    ])
    result.stdout.fnmatch_lines(["SKIPPED [[]4[]] *: llamacpp is not available: building llama-server * failed: "
                                 "BuildError: `cmake --build` failed with exit code 2; see build.log"])


def _not_built(env=None):
    from pytest_speedbench.errors import EngineNotInstalled

    raise EngineNotInstalled("llama-server not found; build it once with `tox -e llama-server`")


def test_build_progress_says_one_line_per_ten_percent():
    said: list[str] = []
    sink = prepare.BuildProgress(said.append)
    for line in ["-- Configuring done", "[  3%] a", "[  9%] b", "[ 12%] c", "[ 13%] d", "[ 35%] e", "[100%] f"]:
        sink.write(line + "\n")
    assert [s.split("%")[0].strip() for s in said] == ["12", "35", "100"]


def test_case_progress_says_prompts_done_and_elapsed_at_most_every_interval():
    now = [0.0]
    said: list[str] = []
    progress = CaseProgress(said.append, "hf-ngram-qualitative-bs1-t0", every=10, clock=lambda: now[0])
    for t, done in [(4, 1), (11, 2), (15, 3), (22, 4)]:
        now[0] = t
        progress(done, 4)
    assert said == ["speedbench: hf-ngram-qualitative-bs1-t0: 2/4 prompts done, 0 tokens streamed, 11 s",
                    "speedbench: hf-ngram-qualitative-bs1-t0: 4/4 prompts done, 0 tokens streamed, 22 s"]
    assert (minutes(9.44), minutes(125)) == ("9.4 s", "2 min 5 s")


def test_results_are_saved_by_default_and_the_path_is_printed(pytester, fake_sglang, tiny_tokenizer_dir,
                                                               prompts_file):
    server = fake_sglang("--accept", "0.8", "--step-ms", "1")
    pytester.makepyfile(test_speedbench=SUITE)
    args = [f"--tokenizer={tiny_tokenizer_dir}", f"--dataset={prompts_file}", "--engine=sglang",
            f"--server-url={server.url}", "--drafter=none", "--warmup=0", "--output-len=8", "-p", "no:cacheprovider"]
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=1)
    (saved,) = (pytester.path / ".speedbench").glob("*/0001_*.json")
    assert f"speedbench results saved to {saved}" in result.stdout.str()
    assert json.loads(saved.read_text())["benchmarks"][0]["param"] == "sglang-none-qualitative-bs1-t0"
    result.stdout.fnmatch_lines(["speedbench: first result after * s (since the session started)",
                                 "speedbench: first result after * s, 1 case(s) in * s"])
    off = pytester.runpytest(*args, "--speedbench-autosave=off")
    off.assert_outcomes(passed=1)
    assert len(list((pytester.path / ".speedbench").glob("*/0*.json"))) == 1
    quiet = pytester.runpytest(*args, "-q", "--speedbench-autosave=off")
    assert "first result after" not in quiet.stdout.str().split("speedbench summary")[0]


def test_a_run_of_other_tests_saves_nothing(pytester):
    """Autosave is on by default and the plugin loads in every pytest run: a run that measures
    nothing (here under xdist, whose controller gathers the workers' results) writes no file."""
    pytester.makepyfile("def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    assert not (pytester.path / ".speedbench").exists()


def test_case_progress_speaks_before_the_first_prompt_finishes_with_tokens_streamed():
    """The heartbeat ticks every second; a line comes every interval even while no prompt has
    finished, with the tokens the running requests streamed so far."""
    from pytest_speedbench.measure.records import RequestRecord

    now = [0.0]
    said: list[str] = []
    progress = CaseProgress(said.append, "hf-none-qualitative-bs1-t0", every=10, clock=lambda: now[0])
    now[0] = 10.0
    progress.tick()  # nothing started yet: tokenizer, reset, warmup
    assert said == ["speedbench: hf-none-qualitative-bs1-t0: preparing (prompts, engine state, warmup), 10 s"]
    said.clear()
    progress(0, 4)  # the measured window starts
    record = RequestRecord("p0", "coding", 0)
    progress.track(record)
    for t in range(11, 35):  # what the heartbeat thread does, one tick a second
        now[0] = float(t)
        record.chunk_tokens.append(1)
        progress.tick()
    assert said == ["speedbench: hf-none-qualitative-bs1-t0: 0/4 prompts done, 10 tokens streamed, 20 s",
                    "speedbench: hf-none-qualitative-bs1-t0: 0/4 prompts done, 20 tokens streamed, 30 s"]
    rounds = progress.part(1, 4)  # pass 2 of 4 (interleaved rounds) counts on the same line
    now[0] = 41.0
    rounds(1, 2)
    assert said[-1] == "speedbench: hf-none-qualitative-bs1-t0: 3/8 prompts done, 24 tokens streamed, 41 s"


def test_progress_lines_reach_a_log_file_while_the_case_runs(tmp_path, fake_sglang, tiny_tokenizer_dir, prompts_file):
    """As CI runs it (`tox -e bench > log`): stdout is a file, not a terminal. Progress lines must be
    in the file while the case is still running, not only when the process ends."""
    import subprocess
    import sys
    import time

    from conftest import default_signals

    server = fake_sglang("--algorithm", "NONE", "--step-ms", "150")  # 32 tokens: ~5 s for the one prompt
    (tmp_path / "test_speedbench.py").write_text(SUITE)
    (tmp_path / "conftest.py").write_text("import pytest_speedbench.progress as p\np.EVERY_S = 1.0\n")
    log = tmp_path / "log"
    cmd = [sys.executable, "-m", "pytest", "test_speedbench.py", "--engine=sglang", "--drafter=none",
           f"--server-url={server.url}", f"--tokenizer={tiny_tokenizer_dir}", f"--dataset={prompts_file}",
           "--category=coding", "--num-prompts=1", "--warmup=0", "--output-len=32", "-p", "no:cacheprovider"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, preexec_fn=default_signals)
        try:
            seen_while_running = False
            while proc.poll() is None:
                if ": 0/1 prompts done" in log.read_text(errors="replace"):
                    seen_while_running = proc.poll() is None
                    break
                time.sleep(0.2)
            proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert proc.returncode == 0, text
    assert seen_while_running, text
    assert "speedbench: sglang-none-qualitative-bs1-t0: 0/1 prompts done, 0 tokens streamed, " in text
