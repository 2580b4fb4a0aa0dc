"""No false alarms: recorded runs of one unchanged commit pass `speedbench compare` with the
documented default rules, a real regression still fails, and an implausible speedup (as seen
in the field: 16.64x at AL 2.16) is reported as unstable rather than as a regression."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_speedbench.cli import main
from pytest_speedbench.metrics.rounds import assess_stability
from pytest_speedbench.results.gates import DEFAULT_RULES

RESULTS = Path(__file__).resolve().parent.parent / "fixtures" / "results"


def _compare(capsys, *files: Path) -> tuple[int, str]:
    code = main(["compare", *map(str, files), "--fail", DEFAULT_RULES])
    return code, capsys.readouterr().out


def test_recorded_noise_passes_and_a_regression_fails(capsys):
    code, out = _compare(capsys, RESULTS / "0001_baseline.json", RESULTS / "0002_noise.json")
    assert code == 0, out
    code, out = _compare(capsys, RESULTS / "0001_baseline.json", RESULTS / "0003_regressed.json")
    assert code == 1 and "breaks rule" in out


def test_an_implausible_speedup_is_reported_unstable_not_failed(tmp_path, capsys):
    base_doc = json.loads((RESULTS / "0001_baseline.json").read_text())
    doc = json.loads((RESULTS / "0002_noise.json").read_text())
    case = "sglang-eagle3-qualitative-bs1-t0"
    base_extra = {b["param"]: b["extra_info"] for b in base_doc["benchmarks"]}[case]
    field_speedup = 16.64  # the field report: the baseline's speedup was implausible, so this run "drops"
    for bench in doc["benchmarks"]:
        if bench["param"] == case:
            extra = bench["extra_info"]
            extra["stability"] = assess_stability({"speedup_user_tps": extra["speedup_user_tps"]},
                                                  extra["acceptance_length"], extra["acceptance_length_ci95"])
    for bench in base_doc["benchmarks"]:
        if bench["param"] == case:
            bench["extra_info"]["speedup_user_tps"] = field_speedup
            bench["extra_info"]["speedup_user_tps_ci95"] = [11.19, 27.40]
            bench["extra_info"]["stability"] = assess_stability(
                {"speedup_user_tps": field_speedup}, base_extra["acceptance_length"],
                base_extra["acceptance_length_ci95"])
            assert bench["extra_info"]["stability"]["verdict"] == "unstable"
    base_path, run_path = tmp_path / "base.json", tmp_path / "run.json"
    base_path.write_text(json.dumps(base_doc))
    run_path.write_text(json.dumps(doc))
    code, out = _compare(capsys, base_path, run_path)
    assert code == 0, out
    assert "1 unstable (speedups not judged)" in out
    assert "not judged as a regression: case unstable in the baseline: speedup_user_tps 16.64 exceeds" in out
