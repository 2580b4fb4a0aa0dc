"""Run status and missing cases, end to end through the plugin against fake SGLang servers.

A saved run says whether it is whole (complete, failed, interrupted) and what it selected; a
usage error saves nothing; `latest` is the newest complete run and the terminal names the runs
it passed over; a baseline case this run did not measure fails the gate unless it was left out
by -k or allowed with --speedbench-allow-missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpcore  # noqa: F401  (imported at collection: see tests/test_plugin_gates.py)
import pytest
from conftest import SUITE, free_port

AR = "sglang-none-qualitative-bs1-t0"
SD = "sglang-eagle3-qualitative-bs1-t0"


@pytest.fixture
def bench(speedbench_suite):
    return speedbench_suite("--num-prompts=1", "--output-len=16", "--speedbench-rounds=1")


def saved(pytester: pytest.Pytester) -> list[Path]:
    return sorted((pytester.path / ".speedbench").glob("*/[0-9][0-9][0-9][0-9]_*.json"))


def run_section(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())["speedbench"]["run"]


def test_status_selection_latest_and_missing_cases(bench, fake_sglang, pytester: pytest.Pytester):
    ar, sd = fake_sglang("--algorithm", "NONE", "--step-ms", "1"), fake_sglang("--accept", "0.8,0.6", "--step-ms", "1")
    urls = f"--server-url=none={ar.url},eagle3={sd.url}"
    rules = "--speedbench-fail=acceptance_length:-50%"

    # 1. a complete run: the baseline
    bench(urls, "--speedbench-save=base").assert_outcomes(passed=2)
    (first,) = saved(pytester)
    assert first.name == "0001_base.json"
    section = run_section(first)
    assert section["name"] == "base"
    assert section["status"] == "complete" and section["selection"]["selected"] == [AR, SD]
    assert section["cases"]["measured"] == 2 and section["cases"]["errored"] == {}

    # 2. a usage error saves nothing
    result = bench(urls, "--temperature=3")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert len(saved(pytester)) == 1

    # 3. a dead server: the run is saved as failed, with the cause
    dead = f"http://127.0.0.1:{free_port()}"
    result = bench(f"--server-url=none={dead},eagle3={dead}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    broken = saved(pytester)[-1]
    section = run_section(broken)
    assert section["status"] == "failed"
    assert section["reason"].startswith("2 of 2 case(s) errored; ") and "127.0.0.1" in section["reason"]
    result.stdout.fnmatch_lines(["speedbench: run failed: 2 of 2 case(s) errored; *"])

    # 4. `latest` passes over the broken run and says so; a -k subset gates what it selected and
    #    names what it left out
    result = bench(urls, "-k", "none", "--speedbench-compare=latest", rules, "-v")
    result.assert_outcomes(passed=1, deselected=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines([
        f"speedbench: baseline latest = {first.name}",
        f"speedbench:   skipped {broken.name}: failed (2 of 2 case(s) errored; *",
    ])
    result.stdout.fnmatch_lines([
        "speedbench: not gated, 1 baseline case(s) left out by the selection:",
        f"  {SD}: measured in the baseline, left out by this run's selection (-k 'none')",
    ])
    result.stdout.fnmatch_lines(["legend: AL = acceptance length*", "AL per category:", "case * coding * writing",
                                 f"{AR} *"])  # -v: AL per category under the table
    subset = saved(pytester)[-1]
    assert run_section(subset)["selection"] == {"keyword": "none", "markexpr": None, "selected": [AR],
                                               "deselected": [SD]}
    assert run_section(subset)["status"] == "complete"

    # 5. a case that is simply not in the run (no -k) is missing: the session fails, naming it
    result = bench(f"--server-url={ar.url}", "--drafter=none", f"--speedbench-compare={first}", rules)
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "speedbench: FAILED: 1 baseline case(s) missing from this run (missing means failed; "
        "--speedbench-allow-missing accepts it)",
        f"  {SD}: measured in the baseline, not in this run",
    ])
    result = bench(f"--server-url={ar.url}", "--drafter=none", f"--speedbench-compare={first}", rules,
                   "--speedbench-allow-missing")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["speedbench: ALLOWED: 1 baseline case(s) missing from this run*"])


def test_changed_settings_are_refused_naming_each_field(bench, fake_sglang, pytester: pytest.Pytester, capsys):
    from pytest_speedbench import cli

    server = fake_sglang("--algorithm", "NONE", "--step-ms", "1")
    rules = "--speedbench-fail=acceptance_length:-50%"
    bench(f"--server-url={server.url}", "--drafter=none", "--num-prompts=2").assert_outcomes(passed=1)
    (base,) = saved(pytester)
    fp = json.loads(base.read_text())["benchmarks"][0]["extra_info"]["settings_fingerprint"]
    assert fp["output_len"] == "16" and fp["num_prompts"] == "2" and fp["engine"] == "sglang"
    assert "4 prompt(s) (coding, writing), sha256 " in fp["dataset"]
    assert "burstiness" not in fp and "goodput" not in fp  # closed loop, no SLOs: older baselines still match

    # fewer new tokens and one category: not gated, the test fails naming both fields with both values
    result = bench(f"--server-url={server.url}", "--drafter=none", "--num-prompts=2", "--output-len=8",
                   "--category=coding", f"--speedbench-compare={base}", rules)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "settings differ from the baseline, so no rule was applied: output_len: 16 -> 8; dataset: " in out
    assert "4 prompt(s) (coding, writing)" in out and "2 prompt(s) (coding)" in out
    assert "(a deliberate change is accepted with --allow-change output_len,dataset)" in out
    changed = saved(pytester)[-1]

    # `speedbench compare` refuses the same pair (exit 3: incomplete, nothing regressed), and
    # --allow-change accepts the named fields
    code = cli.main(["compare", str(base), str(changed), "--fail", "acceptance_length:-50%"])
    text = capsys.readouterr().out
    assert code == 3 and "settings differ from the baseline" in text and "output_len: 16 -> 8" in text
    code = cli.main(["compare", str(base), str(changed), "--fail", "acceptance_length:-50%",
                     "--allow-change", "output_len,dataset"])
    assert code == 0, capsys.readouterr().out
    code = cli.main(["compare", str(base), str(changed), "--fail", "acceptance_length:-50%", "--allow-change", "outputlen"])
    assert code == 2 and "unknown field in --allow-change 'outputlen'; valid values: output_len," in capsys.readouterr().err

    result = bench(f"--server-url={server.url}", "--drafter=none", "--num-prompts=2", "--output-len=8",
                   f"--speedbench-compare={base}", rules, "--speedbench-allow-change=output_len")
    result.assert_outcomes(passed=1)
