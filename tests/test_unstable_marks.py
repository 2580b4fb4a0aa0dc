"""An unstable case (rounds that disagree, an implausible speedup) is marked wherever its speedup
is shown: compare, the CSV export, the report's table and the speedup plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_speedbench.cli import main
from pytest_speedbench.results.export import load_runs, rows

RESULTS = Path(__file__).resolve().parent.parent / "fixtures" / "results"
CASE = "sglang-eagle3-qualitative-bs1-t0"


@pytest.fixture
def unstable_run(tmp_path: Path) -> Path:
    doc = json.loads((RESULTS / "0002_noise.json").read_text())
    for b in doc["benchmarks"]:
        if b["param"] == CASE:
            b["extra_info"]["stability"] = {"verdict": "unstable", "reasons": ["rounds 1.61 and 0.23 disagree"]}
    path = tmp_path / "0002_unstable.json"
    path.write_text(json.dumps(doc))
    return path


def test_compare_and_export_mark_the_unstable_case(unstable_run: Path, tmp_path: Path, capsys):
    main(["compare", str(RESULTS / "0001_baseline.json"), str(unstable_run)])
    out = capsys.readouterr().out
    assert f"{CASE}  [UNSTABLE in 0002_unstable]" in out.splitlines()
    flat = {r["case"]: r for r in rows(load_runs([str(unstable_run)]))}
    assert flat[CASE]["unstable"] is True
    assert not any(r["unstable"] for c, r in flat.items() if c != CASE)
    assert main(["export", str(unstable_run), "--csv", str(tmp_path / "runs.csv")]) == 0
    header, *lines = (tmp_path / "runs.csv").read_text().splitlines()
    assert "unstable" in header.split(",")


def test_report_table_and_speedup_plot_mark_the_unstable_case(unstable_run: Path, tmp_path: Path):
    pytest.importorskip("matplotlib")
    from pytest_speedbench.results.export import runs_dataframe
    from pytest_speedbench.results.report import plot_speedup_vs_batch, summary_rows

    frame = runs_dataframe(load_runs([str(unstable_run)]))
    headers, body = summary_rows(frame)
    column = headers.index("unstable")
    marks = {row[headers.index("case")]: row[column] for row in body}
    assert marks[CASE] == "UNSTABLE" and {m for c, m in marks.items() if c != CASE} == {""}
    fig = plot_speedup_vs_batch(frame)
    assert "hollow markers: unstable cases" in fig._suptitle.get_text()
    hollow = [line for ax in fig.axes for line in ax.get_lines() if line.get_markerfacecolor() == "white"]
    assert hollow  # one hollow marker per panel for the unstable case
    assert main(["report", str(unstable_run), "--out", str(tmp_path / "rep"), "--format", "md"]) == 0
    page = (tmp_path / "rep" / "report.md").read_text()
    assert f"| {CASE} |" in page and "UNSTABLE" in page
