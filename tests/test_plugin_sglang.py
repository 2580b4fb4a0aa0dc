"""The whole plugin driven by pytester against the fake SGLang server.

The fake writes the size of every verification step it emitted, so the reported acceptance
figures can be compared with the truth exactly.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import SUITE



def truth_figures(truth: list[dict]) -> dict:
    """AL, histogram and conditional rates computed straight from the emitted steps."""
    als = [sum(t["steps"]) / len(t["steps"]) for t in truth]
    steps = [s for t in truth for s in t["steps"]]
    hist = Counter(steps)
    rates = []
    for i in range(1, max(steps)):
        at_least_i = sum(1 for s in steps if s >= i)
        rates.append(sum(1 for s in steps if s >= i + 1) / at_least_i)
    return {"al": sum(als) / len(als), "pooled": sum(steps) / len(steps), "hist": hist, "rates": rates}


@pytest.fixture
def suite(pytester: pytest.Pytester, tiny_tokenizer_dir: Path, prompts_file: Path):
    pytester.makepyfile(test_speedbench=SUITE)

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest(
            f"--tokenizer={tiny_tokenizer_dir}", f"--dataset={prompts_file}", "--num-prompts=3",
            "--split=qualitative", "--temperature=0", "-p", "no:cacheprovider", *args,
        )

    return run


def load_entries(path: Path) -> dict[str, dict]:
    doc = json.loads(path.read_text())
    return {b["param"]: b for b in doc["benchmarks"]}


def test_reported_acceptance_equals_ground_truth(suite, fake_sglang, pytester: pytest.Pytester):
    server = fake_sglang("--accept", "0.9,0.7,0.5,0.3", "--step-ms", "1")
    out = pytester.path / "out.json"
    result = suite("--engine=sglang", f"--server-url={server.url}", "--drafter=eagle3", "--draft-length=4",
                   "--batch-size=1", "--warmup=0", "--output-len=64", f"--speedbench-json={out}")
    result.assert_outcomes(passed=1)
    entry = load_entries(out)["sglang-eagle3-qualitative-bs1-t0"]
    extra = entry["extra_info"]
    truth = truth_figures(server.truth())
    assert extra["num_requests"] == len(server.truth()) == 7  # 6 prompts, one with two turns
    assert extra["acceptance_length"] == pytest.approx(truth["al"], abs=1e-12)
    assert extra["acceptance_length_pooled"] == pytest.approx(truth["pooled"], abs=1e-12)
    assert {int(k): v for k, v in extra["al_histogram"].items() if v} == dict(truth["hist"])
    assert extra["conditional_acceptance_rate"][: len(truth["rates"])] == pytest.approx(truth["rates"], abs=1e-12)
    assert extra["al_source"] == "chunks"
    assert extra["acceptance_length_counters"] == pytest.approx(truth["al"], abs=1e-12)
    lo, hi = extra["acceptance_length_ci95"]
    assert lo <= extra["acceptance_length"] <= hi
    assert extra["gate"]["verdict"] in ("pass", "skip")


def test_coalesced_events_make_counters_authoritative(suite, fake_sglang, pytester: pytest.Pytester):
    server = fake_sglang("--accept", "0.8,0.6,0.4", "--coalesce", "3", "--step-ms", "1")
    out = pytester.path / "out.json"
    result = suite("--engine=sglang", f"--server-url={server.url}", "--drafter=eagle3", "--batch-size=2",
                   "--warmup=0", "--output-len=48", f"--speedbench-json={out}")
    result.assert_outcomes(passed=1)
    extra = load_entries(out)["sglang-eagle3-qualitative-bs2-t0"]["extra_info"]
    truth = truth_figures(server.truth())
    assert extra["al_source"] == "engine_counters"
    assert "coalesced" in extra["al_source_reason"]
    assert extra["acceptance_length_chunks"] > 1.02 * truth["al"]
    assert extra["acceptance_length"] == pytest.approx(truth["al"], abs=1e-12)


def test_issue_command_runs_one_test_per_batch_size(suite, fake_sglang, pytester: pytest.Pytester):
    server = fake_sglang("--step-ms", "1")
    out = pytester.path / "out.json"
    result = suite("--engine=sglang", f"--server-url={server.url}", "--drafter=eagle3", "--batch-size=1,4",
                   "--output-len=64", f"--speedbench-json={out}", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*sglang-eagle3-qualitative-bs1-t0*PASSED*", "*sglang-eagle3-qualitative-bs4-t0*PASSED*",
                                 "*speedbench summary*", "*case*AL (95% CI)*"])
    doc = json.loads(out.read_text())
    assert {b["params"]["batch_size"] for b in doc["benchmarks"]} == {1, 4}
    for bench in doc["benchmarks"]:
        assert bench["stats"]["rounds"] == bench["extra_info"]["num_requests"]
        assert bench["extra_info"]["output_tps"] > 0


def test_twin_servers_give_measured_speedup(suite, fake_sglang, pytester: pytest.Pytester):
    ar = fake_sglang("--algorithm", "NONE", "--step-ms", "8")
    sd = fake_sglang("--accept", "0.9,0.8,0.7", "--step-ms", "8")
    out = pytester.path / "out.json"
    result = suite("--engine=sglang", f"--server-url=none={ar.url},eagle3={sd.url}", "--batch-size=1",
                   "--output-len=32", f"--speedbench-json={out}", "-v")
    result.assert_outcomes(passed=2)
    lines = [line for line in result.outlines if "PASSED" in line]
    assert "sglang-none" in lines[0] and "sglang-eagle3" in lines[1]
    entries = load_entries(out)
    sd_extra = entries["sglang-eagle3-qualitative-bs1-t0"]["extra_info"]
    assert entries["sglang-none-qualitative-bs1-t0"]["extra_info"]["speedup_user_tps"] is None
    assert sd_extra["speedup_baseline"] == "sglang-none-qualitative-bs1-t0"
    # Same step latency on both servers: the speedup is the acceptance length, give or take
    # client and scheduling noise.
    assert sd_extra["speedup_user_tps"] > 1.3
    assert sd_extra["speedup_analytical"] == pytest.approx(sd_extra["acceptance_length"], rel=0.3)
    # per-request rows for `speedbench sweep|predict`, on the interleaved SD case too
    ar_rows = entries["sglang-none-qualitative-bs1-t0"]["extra_info"]["per_request"]
    assert ar_rows and {r["id"] for r in sd_extra["per_request"]} == {r["id"] for r in ar_rows}
    assert sd_extra["isl_mean"] > 0 and all(r["steps"] > 0 for r in sd_extra["per_request"])


def test_engine_fixture_starts_once_per_instance(suite, pytester: pytest.Pytester):
    result = suite("--engine=sglang", "--server-url=none=http://127.0.0.1:1,eagle3=http://127.0.0.1:2",
                   "--batch-size=1,4", "--temperature=0,0.7", "--setup-plan")
    setups = [line.strip() for line in result.outlines if "SETUP    S speedbench_engine" in line]
    assert len(setups) == 2, result.outlines
    assert "sglang-none" in setups[0] and "sglang-eagle3" in setups[1]
    assert sum(1 for line in result.outlines if "test_speculative_decoding[" in line) == 8


def test_nonsense_combinations_are_not_generated(suite, pytester: pytest.Pytester):
    result = suite("--engine=llamacpp,sglang", "--drafter=none,eagle3", "--server-url=none=http://x:1,eagle3=http://x:2",
                   "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*not generated: llamacpp: drafter 'eagle3' not supported*"])
    collected = [line for line in result.outlines if "test_speculative_decoding[" in line]
    assert not any("llamacpp-eagle3" in line for line in collected)
    assert any("sglang-eagle3" in line for line in collected)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--engine=foo"], "unknown engine in --engine 'foo'; valid values: sglang, vllm, trtllm, llamacpp, hf"),
        (["--drafter=medusa"], "unknown drafter in --drafter 'medusa'; valid values: none, ngram, draft, eagle, eagle3, mtp"),
        (["--split=train"], "unknown split in --split 'train'; valid values: qualitative, throughput"),
        (["--bucket=4k"], "unknown bucket in --bucket '4k'; valid values: 1k, 2k, 8k, 16k, 32k"),
        (["--batch-size=0"], "--batch-size: 0 is not a positive integer"),
        (["--batch-size=-2"], "--batch-size: -2 is not a positive integer"),
        (["--temperature=3"], "--temperature: 3 is out of range; valid temperatures are 0 to 2"),
        (["--engine=sglang", "--drafter=none,eagle3", "--server-url=http://127.0.0.1:1"],
         "attaches to one running server, which runs one drafter"),
    ],
)
def test_bad_options_are_usage_errors(suite, args, message):
    result = suite(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_malformed_config_reports_line(suite, pytester: pytest.Pytester):
    pytester.path.joinpath("speedbench.yaml").write_text("engine: sglang\nbatch_size: [1, 2\noutput_len: 8\n")
    result = suite()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "malformed speedbench config" in result.stderr.str()
    assert "speedbench.yaml:3" in result.stderr.str()


def test_yaml_sets_values_and_cli_wins(suite, pytester: pytest.Pytester):
    pytester.path.joinpath("speedbench.yaml").write_text(
        "engine: sglang\ndrafter: [none, eagle3]\nbatch_size: [2, 8]\n"
        "server_url: none=http://127.0.0.1:1,eagle3=http://127.0.0.1:2\n"
    )
    result = suite("--batch-size=3", "--collect-only", "-q")
    ids = [line for line in result.outlines if "test_speculative_decoding[" in line]
    assert len(ids) == 2 and all("-bs3-" in line for line in ids)


def test_bucket_with_qualitative_split_is_explained_only_when_asked(suite, pytester: pytest.Pytester):
    url = "--server-url=http://127.0.0.1:1"
    asked = suite("--engine=sglang", "--drafter=eagle3", url, "--bucket=1k", "--collect-only", "-q")
    asked.stdout.fnmatch_lines(["*not generated: buckets apply to the throughput split only*"])
    assert any("sglang-eagle3-qualitative-bs1-t0" in line for line in asked.outlines)
    default = suite("--engine=sglang", "--drafter=eagle3", url, "--collect-only", "-q")
    assert not any("not generated" in line for line in default.outlines)


def test_throughput_split_on_a_prepared_directory(pytester: pytest.Pytester, tiny_tokenizer_dir: Path, fake_sglang):
    """The issue's command: `--dataset=DIR --split=throughput --bucket=1k,2k` on a directory
    written by `speedbench prepare`; every bucket becomes its own case."""
    from pytest_speedbench.cli import main

    prepared = pytester.path / "prepared"
    assert main(["prepare", "--source", "bundled", "--out", str(prepared)]) == 0
    server = fake_sglang("--step-ms", "1")
    pytester.makepyfile(test_speedbench=SUITE)
    out = pytester.path / "out.json"
    result = pytester.runpytest(
        f"--tokenizer={tiny_tokenizer_dir}", f"--dataset={prepared}", "--split=throughput", "--bucket=1k,2k",
        "--engine=sglang", f"--server-url={server.url}", "--drafter=eagle3", "--num-prompts=1", "--warmup=0",
        "--output-len=16", f"--speedbench-json={out}", "-p", "no:cacheprovider", "-W", "ignore",
    )
    result.assert_outcomes(passed=2)
    entries = load_entries(out)
    assert set(entries) == {"sglang-eagle3-throughput-1k-bs1-t0", "sglang-eagle3-throughput-2k-bs1-t0"}
    for entry in entries.values():
        # one prompt per entropy level (low_entropy, mixed, high_entropy)
        assert entry["extra_info"]["num_requests"] == 3
        assert set(entry["extra_info"]["acceptance_length_by_category"]) == {"low_entropy", "mixed", "high_entropy"}
    # the 2k prompts reach the engine longer than the 1k ones (input_len logged by the fake)
    lengths = [t["input_len"] for t in server.truth()]
    assert len(lengths) == 6 and min(lengths[3:]) > max(lengths[:3])


def test_ignore_eos_setting_is_recorded_in_the_results(suite, fake_sglang, pytester: pytest.Pytester):
    """--ignore-eos=off (the engines' own default) is sent and recorded; on is the default."""
    server = fake_sglang("--step-ms", "1")
    out_off, out_on = pytester.path / "off.json", pytester.path / "on.json"
    args = ("--engine=sglang", f"--server-url={server.url}", "--drafter=none", "--warmup=0", "--output-len=8",
            "-W", "ignore::Warning")
    suite(*args, "--ignore-eos=off", f"--speedbench-json={out_off}").assert_outcomes(passed=1)
    suite(*args, f"--speedbench-json={out_on}").assert_outcomes(passed=1)
    (off,), (on,) = load_entries(out_off).values(), load_entries(out_on).values()
    assert off["options"]["ignore_eos"] is False and on["options"]["ignore_eos"] is True
    assert off["options"]["output_len"] == on["options"]["output_len"] == 8
