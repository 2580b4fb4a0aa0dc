"""`speedbench compare`: exit codes, formats, noise awareness, missing cases, pytest-benchmark compatibility."""

from __future__ import annotations

import copy
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_speedbench.cli import main

RESULTS = Path(__file__).resolve().parent.parent / "fixtures" / "results"
BASE = str(RESULTS / "0001_baseline.json")
NOISE = str(RESULTS / "0002_noise.json")
REGRESSED = str(RESULTS / "0003_regressed.json")
RULES = "acceptance_length:-3%,speedup_user_tps:-5%,ttft_s.p99:+10%"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["compare", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_regression_fails_with_precise_reasons(capsys):
    code, out, _ = run(capsys, BASE, REGRESSED, "--fail", "acceptance_length:-3%")
    assert code == 1
    assert ("! 0003_regressed: acceptance_length: 2.66 -> 2.30 (-13.5%) breaks rule acceptance_length:-3%; "
            "baseline 2.66 outside current 95% CI [2.23, 2.38]") in out
    header = "sglang-eagle3-qualitative-bs1-t0  [FAIL]"
    assert header in out
    # AR and ngram cases did not regress on AL
    assert "sglang-ngram-qualitative-bs1-t0  [PASS]" in out
    # the regressed run also lacks a case the baseline measured: missing means failed, named
    assert "INCOMPLETE: 0003_regressed: sglang-ngram-throughput-1k-bs64-t0: measured in the baseline, not in this run" \
        in out.splitlines()
    assert out.rstrip().endswith("15 cases, 14 verdicts: 5 failed, 9 passed, 0 not gated; "
                                 "1 missing from a compared run; gate incomplete: 1 problem(s)")


def test_noise_run_passes_and_identical_runs_pass(capsys):
    code, out, _ = run(capsys, BASE, NOISE, "--fail", RULES.replace(",ttft_s.p99:+10%", ""))
    assert code == 0, out
    assert "failed" in out and " 0 failed" in out
    code, out, _ = run(capsys, BASE, BASE, "--fail", RULES, "--strict")
    assert code == 3  # a run compared with itself gates nothing
    assert "15 cases, 15 verdicts: 0 failed, 15 passed" in out
    assert "INCOMPLETE: 0001_baseline#2 is the baseline itself: nothing to gate" in out.splitlines()


def test_change_inside_ci_is_noise_unless_strict(capsys):
    # eagle3 qualitative: 2.66 -> 2.59 (-2.6%) is beyond -2% but the baseline is inside the CI
    code, out, _ = run(capsys, BASE, NOISE, "--fail", "acceptance_length:-2%")
    assert code == 0
    assert ("acceptance_length: 2.66 -> 2.59 (-2.6%) exceeds rule acceptance_length:-2% but baseline 2.66 "
            "lies inside current 95% CI [2.50, 2.69]: within noise") in out
    code, out, _ = run(capsys, BASE, NOISE, "--fail", "acceptance_length:-2%", "--strict")
    assert code == 1
    assert "breaks rule acceptance_length:-2%; strict: confidence interval not consulted" in out


def test_without_rules_shows_changes_and_exits_zero(capsys):
    code, out, _ = run(capsys, BASE, REGRESSED)
    assert code == 0
    assert "verdict" not in out and "[PASS]" not in out and "[SKIP]" not in out
    assert out.rstrip().endswith("15 cases compared; no --fail rules or thresholds, nothing gated; "
                                 "1 missing from a compared run")
    line = next(l for l in out.splitlines() if l.strip().startswith("acceptance_length ") and "2.30" in l)
    assert line.split()[1:] == ["2.66", "2.30", "-13.5%"]


def test_markdown_format(capsys):
    code, out, _ = run(capsys, BASE, NOISE, REGRESSED, "--fail", "acceptance_length:-3%", "--format", "markdown",
                       "--metrics", "acceptance_length,speedup_user_tps")
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == "# speedbench compare: 0001_baseline vs 0002_noise vs 0003_regressed"
    assert "## sglang-eagle3-qualitative-bs1-t0 — PASS, FAIL" in lines
    assert "## sglang-ngram-throughput-1k-bs64-t0 — PASS; missing from 0003_regressed" in lines
    tables = [l for l in lines if l.startswith("|")]
    widths = {l.count("|") for l in tables}
    assert widths == {9}, widths  # metric + base + 2 x (value, change, verdict) = 8 columns
    assert "| acceptance_length | 2.66 | 2.59 | -2.6% | pass | 2.30 | -13.5% | fail |" in lines


def test_csv_format(capsys, tmp_path):
    out_file = tmp_path / "cmp.csv"
    code, out, _ = run(capsys, BASE, REGRESSED, "--fail", RULES, "--format", "csv", "-o", str(out_file))
    assert code == 1 and out == ""
    rows = list(csv.DictReader(io.StringIO(out_file.read_text())))
    assert set(rows[0]) == {"case", "metric", "run", "value", "baseline", "change_pct", "outcome"}
    row = next(r for r in rows if r["case"] == "sglang-eagle3-qualitative-bs1-t0"
               and r["metric"] == "acceptance_length" and r["run"] == "0003_regressed")
    assert row["outcome"] == "fail"
    assert float(row["change_pct"]) == pytest.approx((float(row["value"]) / float(row["baseline"]) - 1) * 100,
                                                     rel=1e-3)
    baseline_rows = [r for r in rows if r["run"] == "0001_baseline"]
    assert baseline_rows and all(r["outcome"] == "" and r["change_pct"] == "" for r in baseline_rows)


def test_cases_missing_from_baseline_are_reported_not_failed(capsys, tmp_path):
    doc = json.loads(Path(BASE).read_text())
    trimmed = copy.deepcopy(doc)
    trimmed["benchmarks"] = [b for b in doc["benchmarks"] if b["param"] != "sglang-eagle3-qualitative-bs1-t0"]
    base = tmp_path / "trimmed.json"
    base.write_text(json.dumps(trimmed))
    code, out, _ = run(capsys, str(base), REGRESSED, "--fail", "acceptance_length:-3%",
                       "--metrics", "acceptance_length")
    assert "sglang-eagle3-qualitative-bs1-t0  [missing from baseline (not gated)]" in out
    assert "0003_regressed: no baseline result for this case; regression rules not applied" in out
    assert code == 1  # the other eagle3 cases still regress
    only_missing = copy.deepcopy(doc)
    only_missing["benchmarks"] = [b for b in doc["benchmarks"] if b["params"]["drafter"] != "eagle3"]
    base.write_text(json.dumps(only_missing))
    code, out, _ = run(capsys, str(base), REGRESSED, "--fail", "acceptance_length:-3%")
    assert code == 3, out  # nothing regressed, but a baseline case is missing from the run
    assert "5 missing from the baseline" in out
    code, out, _ = run(capsys, str(base), REGRESSED, "--fail", "acceptance_length:-3%", "--allow-missing")
    assert code == 0, out
    assert "note: 0003_regressed: sglang-ngram-throughput-1k-bs64-t0: measured in the baseline, not in this run" \
        in out.splitlines()


def test_thresholds_from_config_on_a_single_run(capsys, tmp_path):
    cfg = tmp_path / "speedbench.yaml"
    cfg.write_text(
        "thresholds:\n"
        "  - match: {drafter: eagle3, category: coding}\n"
        "    acceptance_length: {min: 2.0}\n"
        "  - match: {drafter: eagle3, split: throughput}\n"
        "    speedup_user_tps: {min: 2.0}\n"
    )
    code, out, _ = run(capsys, BASE, "--config", str(cfg))
    assert code == 0, out
    code, out, _ = run(capsys, REGRESSED, "--config", str(cfg))
    assert code == 1
    assert "below minimum 2.00 of thresholds[1] (drafter=eagle3, split=throughput)" in out


@pytest.mark.parametrize(
    "argv, fragment",
    [
        ([BASE, REGRESSED, "--fail", "acceptance_lenght:-3%"], "--fail rule 'acceptance_lenght:-3%': unknown metric"),
        ([BASE, REGRESSED, "--metrics", "ttft_s"], "--metrics: unknown metric 'ttft_s' (ttft_s is a summary"),
        ([BASE, "nope.json"], "nope.json"),
        ([BASE], "compare needs a baseline and at least one run"),
    ],
)
def test_usage_errors_exit_2(capsys, argv, fragment):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert fragment in err and err.startswith("speedbench compare: error:")


def test_bad_format_is_rejected_by_argparse(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compare", BASE, NOISE, "--format", "html"])
    assert exc.value.code == 2
    assert "invalid choice: 'html'" in capsys.readouterr().err


def test_latest_and_run_numbers_resolve_in_storage(capsys, tmp_path):
    results = pytest.importorskip("pytest_speedbench.results.document")
    storage = results.Storage(tmp_path / "store")
    storage.folder.mkdir(parents=True)
    for name in ("0001_baseline.json", "0003_regressed.json"):
        doc = json.loads((RESULTS / name).read_text())
        doc["speedbench"]["run"] = {"status": "complete", "reason": ""}
        (storage.folder / name).write_text(json.dumps(doc))
    code, out, err = run(capsys, "1", "latest", "--storage", str(tmp_path / "store"), "--fail", "acceptance_length:-3%")
    assert code == 1
    assert out.splitlines()[:2] == ["baseline 0001_baseline: complete", "run 0003_regressed: complete"]
    assert any("0001_baseline" in line and "0003_regressed" in line for line in out.splitlines()[3:6])
    assert err.splitlines() == ["latest = 0003_regressed.json"]


def test_latest_passes_over_a_broken_run_and_the_gate_fails_saying_why(capsys, tmp_path):
    """A night whose engine never started is saved as failed; `latest` is then the previous
    complete run, and a gate on `latest` fails (exit 3) naming the broken run and its cause."""
    from pytest_speedbench.results.document import Storage

    storage = Storage(tmp_path / "store")
    storage.folder.mkdir(parents=True)
    doc = json.loads(Path(BASE).read_text())
    doc["speedbench"]["run"] = {"status": "complete", "reason": ""}
    (storage.folder / "0001_a.json").write_text(json.dumps(doc))
    dead = copy.deepcopy(doc)
    error = "EngineError: cannot reach SGLang server at http://127.0.0.1:9: [Errno 111] Connection refused"
    dead["benchmarks"] = [{**doc["benchmarks"][0], "extra_info": {"error": error,
                                                                   "gate": {"verdict": "fail", "reasons": [error]}}}]
    dead["speedbench"]["run"] = {"status": "failed", "reason": f"1 of 1 case(s) errored; x: {error}"}
    (storage.folder / "0002_b.json").write_text(json.dumps(dead))
    store = ["--storage", str(tmp_path / "store"), "--fail", "acceptance_length:-3%"]
    code, out, err = run(capsys, "1", "latest", *store)
    assert code == 3
    assert err.splitlines()[0] == "latest = 0001_a.json"
    assert "skipped 0002_b.json: failed (1 of 1 case(s) errored; x: " + error + ")" in err
    assert "INCOMPLETE: 0001_a#2 is the baseline itself: nothing to gate (0002_b.json: failed" in out
    # the broken run named by number: its errored case and the 14 it never ran fail the gate
    code, out, _ = run(capsys, "1", "2", *store)
    assert code == 3
    assert "run 0002_b: failed: 1 of 1 case(s) errored" in out
    assert f"INCOMPLETE: 0002_b: {doc['benchmarks'][0]['param']}: measured in the baseline, errored in this run " \
           f"({error})" in out.splitlines()
    assert sum(line.startswith("INCOMPLETE: 0002_b: ") and "not in this run" in line for line in out.splitlines()) == 14


def _pytest_benchmark(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    # pytest-benchmark's CLI loads every installed pytest plugin, ours included, as a user's would.
    return subprocess.run([sys.executable, "-m", "pytest_benchmark", *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_pytest_benchmark_compare_and_list_open_the_files(tmp_path):
    proc = _pytest_benchmark("compare", BASE, REGRESSED, "--group-by", "group", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "benchmark 'sglang qualitative': 6 tests" in proc.stdout
    assert "test_speedbench[sglang-eagle3-qualitative-bs1-t0] (" in proc.stdout
    proc = _pytest_benchmark("--storage", str(RESULTS), "list", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [Path(p).name for p in proc.stdout.split()] == ["0001_baseline.json", "0002_noise.json",
                                                           "0003_regressed.json"]
