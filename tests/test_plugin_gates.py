"""Regression gates end to end: the whole plugin, driven by pytester, against fake SGLang servers.

Two runs against fakes with different seeded acceptance processes stand in for "last night" and
"tonight". The fake is deterministic for a given `--seed` (sequential requests at batch size 1,
no warmup), so a run repeated with the same settings measures the same acceptance length, and a
different seed draws a different sample of the same process. The expected failure messages are
rebuilt from the two results files, so the tests pin the exact wording documented in
docs/gates.md, not a copy of the run's own output.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpcore  # noqa: F401  (see below)
import pytest
from conftest import SUITE

from pytest_speedbench import cli
from pytest_speedbench.results.gates import fmt
from pytest_speedbench.results.table import LEGEND, gate_lines, render

# httpcore is imported here, at collection, on purpose: pytester drops the modules first imported
# during a test, and httpx caches httpcore's exception classes on first use, so a lazily imported
# httpcore would come back as a second copy whose ConnectError escapes the fake server's
# readiness loop in the next test.

SD = "sglang-eagle3-qualitative-bs1-t0"
AR = "sglang-none-qualitative-bs1-t0"
#: the baseline process and a clearly worse one (expected AL about 3.1 against 1.7)
GOOD, BAD = "0.9,0.8,0.7", "0.5,0.3,0.1"


@pytest.fixture
def bench(speedbench_suite):
    """Run the speedbench suite in pytester with small, fast settings plus `args`."""
    return speedbench_suite("--num-prompts=3", "--temperature=0", "--output-len=32", "-v")


def entries(path: Path) -> dict[str, dict[str, Any]]:
    return {b["param"]: b for b in json.loads(path.read_text())["benchmarks"]}


def rule_failure(metric: str, rule: str, base: dict[str, Any], cur: dict[str, Any]) -> str:
    """The failure message docs/gates.md promises for a relative rule, from the two results."""
    b, c = base[metric], cur[metric]
    lo, hi = cur[f"{metric}_ci95"]
    return (f"{metric}: {fmt(b)} -> {fmt(c)} ({(c - b) / b * 100:+.1f}%) breaks rule {rule}; "
            f"baseline {fmt(b)} outside current 95% CI [{fmt(lo)}, {fmt(hi)}]")


def rule_noise(metric: str, rule: str, base: dict[str, Any], cur: dict[str, Any]) -> str:
    """The within-noise message docs/gates.md promises for a relative rule."""
    b, c = base[metric], cur[metric]
    lo, hi = cur[f"{metric}_ci95"]
    return (f"{metric}: {fmt(b)} -> {fmt(c)} ({(c - b) / b * 100:+.1f}%) exceeds rule {rule} but baseline "
            f"{fmt(b)} lies inside current 95% CI [{fmt(lo)}, {fmt(hi)}]: within noise")


def compare(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(["compare", *argv])
    return code, capsys.readouterr().out


def test_regression_fails_exactly_the_drafter_test(bench, fake_sglang, pytester: pytest.Pytester, capsys):
    ar = fake_sglang("--algorithm", "NONE", "--step-ms", "5")
    good = fake_sglang("--accept", GOOD, "--step-ms", "5")
    first = bench(f"--server-url=none={ar.url},eagle3={good.url}", "--batch-size=1", "--speedbench-autosave")
    first.assert_outcomes(passed=2)
    saved = sorted((pytester.path / ".speedbench").glob("*/0001_*.json"))
    assert len(saved) == 1, first.outlines

    bad = fake_sglang("--accept", BAD, "--step-ms", "5")
    run2, junit = pytester.path / "run2.json", pytester.path / "junit.xml"
    rules = "acceptance_length:-3%,speedup_user_tps:-10%"
    second = bench(f"--server-url=none={ar.url},eagle3={bad.url}", "--batch-size=1",
                   "--speedbench-compare=latest", f"--speedbench-fail={rules}",
                   f"--speedbench-json={run2}", f"--junitxml={junit}")

    # Exactly the drafter test is red; its AR twin (AL 1 in both runs) passes.
    second.assert_outcomes(passed=1, failed=1)
    second.stdout.fnmatch_lines([f"*{AR}*PASSED*", f"*{SD}*FAILED*"])
    base, cur = entries(saved[0]), entries(run2)
    b_sd, c_sd = base[SD]["extra_info"], cur[SD]["extra_info"]
    assert c_sd["acceptance_length"] < 0.7 * b_sd["acceptance_length"]
    al_msg = rule_failure("acceptance_length", "acceptance_length:-3%", b_sd, c_sd)
    # The speedup's interval covers interleaved rounds as well as prompts, so on a loaded machine a
    # 5 ms-step fake may leave the baseline inside it: then the drop is reported as noise, not failed;
    # and rounds that disagree (the machine not steady) mark the case unstable: reported, not failed.
    lo, hi = c_sd["speedup_user_tps_ci95"]
    speedup_fails = not lo <= b_sd["speedup_user_tps"] <= hi
    speedup_msg = (rule_failure if speedup_fails else rule_noise)("speedup_user_tps", "speedup_user_tps:-10%",
                                                                  b_sd, c_sd)
    outcome = "fail" if speedup_fails else "noise"
    if (c_sd.get("stability") or {}).get("verdict") == "unstable" and speedup_fails:
        outcome = "unstable"
        speedup_msg += "; not judged as a regression: "
    out = second.stdout.str()
    failures = [al_msg, speedup_msg] if outcome == "fail" else [al_msg]
    assert f"{SD}: " + "\n".join(failures) in out  # the test's failure, names the combination
    assert c_sd["gate"]["verdict"] == "fail" and c_sd["gate"]["reasons"][0] == al_msg
    assert c_sd["gate"]["reasons"][1].startswith(speedup_msg)
    ar_checks = {c["metric"]: c["outcome"] for c in cur[AR]["extra_info"]["gate"]["checks"]}
    assert ar_checks == {"acceptance_length": "pass"}  # AR has no speedup: the speedup rule is not its

    # The summary lists every gate result: the failures in full, the AR twin's pass.
    counts = {"fail": "2 failed", "noise": "1 failed, 1 within noise", "unstable": "1 failed, 1 unstable"}
    labels = {"fail": "FAIL", "noise": "noise", "unstable": "UNSTABLE"}
    lines = ["gates:", f"  {AR}: pass (1 passed); passed: acceptance_length:-3%", f"  {SD}: fail ({counts[outcome]})",
             f"    FAIL: {al_msg}", f"    {labels[outcome]}: {speedup_msg}*"]
    second.stdout.fnmatch_lines([line.replace("[", "[[]") for line in lines])

    # JUnit: the failing testcase is the combination, and each case carries its key metrics.
    cases = {tc.get("name"): tc for tc in ET.parse(junit).getroot().iter("testcase")}
    assert set(cases) == {f"test_speculative_decoding[{AR}]", f"test_speculative_decoding[{SD}]"}
    sd_case, ar_case = cases[f"test_speculative_decoding[{SD}]"], cases[f"test_speculative_decoding[{AR}]"]
    assert ar_case.find("failure") is None
    assert al_msg in sd_case.find("failure").get("message")
    props = {p.get("name"): p.get("value") for p in sd_case.iter("property")}
    assert props["speedbench.gate"] == "fail"
    assert float(props["speedbench.acceptance_length"]) == pytest.approx(c_sd["acceptance_length"], rel=1e-5)
    lo, hi = (float(x) for x in props["speedbench.acceptance_length_ci95"].split(","))
    assert (lo, hi) == pytest.approx(tuple(c_sd["acceptance_length_ci95"]), rel=1e-5)
    assert float(props["speedbench.speedup_user_tps"]) == pytest.approx(c_sd["speedup_user_tps"], rel=1e-5)
    assert int(props["speedbench.num_requests"]) == c_sd["num_requests"]
    ar_props = {p.get("name"): p.get("value") for p in ar_case.iter("property")}
    assert ar_props["speedbench.gate"] == "pass" and "speedbench.speedup_user_tps" not in ar_props

    # `speedbench compare` gates on its own over the same two files, with the same message.
    code, text = compare(str(saved[0]), str(run2), "--fail", rules, capsys=capsys)
    assert code == 1 and al_msg in text
    code, text = compare(str(saved[0]), str(saved[0]), "--fail", rules, capsys=capsys)
    assert code == 3 and "is the baseline itself: nothing to gate" in text  # a run against itself gates nothing


def test_same_process_passes_identical_and_within_noise(bench, fake_sglang, pytester: pytest.Pytester, capsys):
    base_file, same_file, other_file = (pytester.path / f"{n}.json" for n in ("base", "same", "other"))
    rule = "acceptance_length:-2%"

    def run_against(seed: str, out: Path, *args: str) -> pytest.RunResult:
        server = fake_sglang("--accept", GOOD, "--seed", seed, "--step-ms", "1")
        return bench(f"--server-url={server.url}", "--drafter=eagle3", "--batch-size=1",
                     f"--speedbench-json={out}", *args)

    run_against("0", base_file).assert_outcomes(passed=1)
    gated = (f"--speedbench-compare={base_file}", f"--speedbench-fail={rule}")

    # Identical settings: the same measurement, a pass with a zero change.
    run_against("0", same_file, *gated).assert_outcomes(passed=1)
    base, same = entries(base_file)[SD]["extra_info"], entries(same_file)[SD]["extra_info"]
    assert same["acceptance_length"] == base["acceptance_length"]
    [check] = same["gate"]["checks"]
    assert (check["outcome"], check["change_pct"]) == ("pass", 0.0)
    assert same["gate"]["verdict"] == "pass"

    # Another sample of the same process (seed 3): AL drops by more than the 2% tolerance, but the
    # baseline lies inside this run's interval, so the drop is noise and the test passes.
    noisy = run_against("3", other_file, *gated)
    noisy.assert_outcomes(passed=1)
    other = entries(other_file)[SD]["extra_info"]
    b, c = base["acceptance_length"], other["acceptance_length"]
    lo, hi = other["acceptance_length_ci95"]
    assert (c - b) / b < -0.02 and lo <= b <= hi, "seed 3 no longer draws a drop inside noise"
    [check] = other["gate"]["checks"]
    message = (f"acceptance_length: {fmt(b)} -> {fmt(c)} ({(c - b) / b * 100:+.1f}%) exceeds rule {rule} but "
               f"baseline {fmt(b)} lies inside current 95% CI [{fmt(lo)}, {fmt(hi)}]: within noise")
    assert (check["outcome"], check["message"]) == ("noise", message)
    assert (other["gate"]["verdict"], other["gate"]["reasons"]) == ("pass", [message])
    noisy.stdout.fnmatch_lines([f"  {SD}: pass (1 within noise)", f"    noise: {message}"])

    # The same two files: `speedbench compare` agrees, and --strict turns the drop into a failure.
    assert compare(str(base_file), str(other_file), "--fail", rule, capsys=capsys)[0] == 0
    code, text = compare(str(base_file), str(other_file), "--fail", rule, "--strict", capsys=capsys)
    assert code == 1 and f"breaks rule {rule}; strict" in text


THRESHOLDS = """\
thresholds:
  - match: {drafter: eagle3, batch_size: 2}
    acceptance_length: {min: 3.5}
  - match: {drafter: eagle3}
    acceptance_length: {min: 2.0, max: 3.9}
    speedup_user_tps: {min: 1.1}
  - match: {drafter: eagle3, category: coding}
    acceptance_length: {min: 1.5}
  - match: {drafter: none}
    acceptance_length: {min: 99}
"""


def test_thresholds_fail_and_pass_as_configured(bench, fake_sglang, pytester: pytest.Pytester):
    pytester.path.joinpath("speedbench.yaml").write_text(THRESHOLDS)
    server = fake_sglang("--accept", GOOD, "--step-ms", "1")
    out = pytester.path / "out.json"
    result = bench(f"--server-url={server.url}", "--drafter=eagle3", "--batch-size=1,2", f"--speedbench-json={out}")

    bs1, bs2 = "sglang-eagle3-qualitative-bs1-t0", "sglang-eagle3-qualitative-bs2-t0"
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([f"*{bs1}*PASSED*", f"*{bs2}*FAILED*"])
    found = entries(out)
    extra = found[bs2]["extra_info"]
    al, (lo, hi) = extra["acceptance_length"], extra["acceptance_length_ci95"]
    assert 2.0 < al < 3.5  # the process's AL is about 3.1: only thresholds[0]'s minimum breaks
    message = (f"acceptance_length: {fmt(al)} (95% CI [{fmt(lo)}, {fmt(hi)}]) below minimum 3.50 of "
               "thresholds[0] (drafter=eagle3, batch_size=2)")
    assert f"{bs2}: {message}" in result.stdout.str()
    assert extra["gate"]["reasons"][0] == message

    def outcomes(case: str) -> list[tuple[str, str]]:
        return sorted((c["metric"] + " " + c["rule"], c["outcome"]) for c in found[case]["extra_info"]["gate"]["checks"])

    common = [
        ("acceptance_length max 3.90 of thresholds[1] (drafter=eagle3)", "pass"),
        ("acceptance_length min 2.00 of thresholds[1] (drafter=eagle3)", "pass"),
        ("acceptance_length_by_category.coding min 1.50 of thresholds[2] (drafter=eagle3, category=coding)", "pass"),
        ("speedup_user_tps min 1.10 of thresholds[1] (drafter=eagle3)", "skip"),  # no AR twin: not measured
    ]
    assert outcomes(bs1) == common  # thresholds[3] (drafter none) matches neither case
    assert outcomes(bs2) == sorted(common + [("acceptance_length min 3.50 of thresholds[0] "
                                              "(drafter=eagle3, batch_size=2)", "fail")])
    assert found[bs1]["extra_info"]["gate"]["verdict"] == "pass"
    result.stdout.fnmatch_lines([f"  {bs1}: pass (3 passed, 1 not checked); passed: *",
                                 f"  {bs2}: fail (1 failed, 3 passed, 1 not checked); passed: *",
                                 f"    FAIL: {message}"])


# --------------------------------------------------------------------------- the summary table alone


def check(outcome: str, metric: str = "acceptance_length", rule: str = "acceptance_length:-3%",
          kind: str = "rule") -> dict[str, Any]:
    return {"kind": kind, "metric": metric, "rule": rule, "outcome": outcome, "message": f"{metric} {outcome} msg"}


def entry(name: str, gate: dict[str, Any] | None) -> dict[str, Any]:
    extra: dict[str, Any] = {"acceptance_length": 2.5, "acceptance_length_ci95": [2.4, 2.6]}
    if gate is not None:
        extra["gate"] = gate
    return {"param": name, "extra_info": extra}


def test_gate_lines_count_passes_and_spell_out_the_rest():
    checks = [check("pass", "speedup_user_tps", "speedup_user_tps:-5%"), check("skip", "ttft_s.p99", "ttft_s.p99:+10%"),
              check("noise"), check("fail", "acceptance_length", "min 2.50 of thresholds[0] (all cases)", "threshold"),
              check("pass", "output_tps", "min 10 of thresholds[1] (all cases)", "threshold")]
    gate = {"verdict": "fail", "reasons": ["3 of 7 requests failed; first: t-1 turn 0: boom",
                                           *(c["message"] for c in checks if c["outcome"] != "pass")],
            "checks": checks}
    assert gate_lines(entry("case-a", gate)) == [
        "  case-a: fail (1 failed, 2 passed, 1 within noise, 1 not checked); "
        "passed: speedup_user_tps:-5%, output_tps min 10 of thresholds[1] (all cases)",
        "    FAIL: acceptance_length fail msg",
        "    noise: acceptance_length noise msg",
        "    skip: ttft_s.p99 skip msg",
        "    FAIL: 3 of 7 requests failed; first: t-1 turn 0: boom",  # a reason no check explains
    ]


def test_render_falls_back_to_reasons_and_omits_ungated_cases():
    errored = entry("case-err", {"verdict": "fail", "reasons": ["EngineError: server died"]})
    ungated = entry("case-none", {"verdict": "skip", "reasons": [], "checks": []})
    lines = render([ungated, errored])
    assert lines[0].startswith("case ") and lines[2].startswith("case-none ") and lines[3].startswith("case-err ")
    assert lines[4:4 + len(LEGEND)] == list(LEGEND)  # the legend sits between the rows and the gates
    assert lines[4 + len(LEGEND):] == ["gates:", "  case-err: fail", "    FAIL: EngineError: server died"]
    assert "gates:" not in render([ungated, entry("case-old", None)])
