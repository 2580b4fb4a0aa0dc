"""Reading the summary: a legend under the table, and AL per category as a table (terminal with
-v, report.md, `speedbench compare --per-category`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_speedbench.cli import main
from pytest_speedbench.results.table import LEGEND, category_rows, render

RESULTS = Path(__file__).resolve().parent.parent / "fixtures" / "results"
BASE = RESULTS / "0001_baseline.json"


def entries() -> list[dict]:
    return json.loads(BASE.read_text())["benchmarks"]


def test_legend_explains_every_short_word_of_the_table():
    lines = render(entries())
    legend = "\n".join(LEGEND)
    assert lines[lines.index(LEGEND[0]) - 1].startswith("sglang-")  # right under the last row
    for word in ("AL src", "chunks", "counters", "mixed", "anl", "analytical", "pass", "fail", "skip", "unstable",
                 "engine AL/draft", "step ms pooled/req-mean"):
        assert word in legend, word
    assert "AL per category:" not in lines  # only with -v


def test_al_per_category_table_in_the_terminal_compare_and_report(tmp_path: Path, capsys):
    rows = category_rows(entries())
    header, body = rows[0], rows[1:]
    eagle3 = next(b for b in entries() if b["param"] == "sglang-eagle3-qualitative-bs1-t0")
    by_cat = eagle3["extra_info"]["acceptance_length_by_category"]
    assert set(by_cat) <= set(header[1:]) and list(header[1:]) == sorted(header[1:])  # every category seen
    row = dict(zip(header, next(r for r in body if r[0] == "sglang-eagle3-qualitative-bs1-t0")))
    assert {c: float(row[c]) for c in by_cat} == pytest.approx(by_cat, abs=0.005)
    assert {row[c] for c in header[1:] if c not in by_cat} <= {"-"}
    lines = render(entries(), per_category=True)
    assert "AL per category:" in lines and any(line.startswith("sglang-eagle3-qualitative-bs1-t0 ") for line in
                                                 lines[lines.index("AL per category:"):])
    main(["compare", str(BASE), str(RESULTS / "0002_noise.json"), "--per-category"])
    out = capsys.readouterr().out
    assert "0001_baseline: AL per category:" in out and "0002_noise: AL per category:" in out
    main(["compare", str(BASE), str(RESULTS / "0002_noise.json"), "--per-category", "--format", "markdown"])
    assert "## AL per category: 0002_noise" in capsys.readouterr().out
    pytest.importorskip("matplotlib")
    assert main(["report", str(BASE), "--out", str(tmp_path / "rep"), "--format", "md"]) == 0
    page = (tmp_path / "rep" / "report.md").read_text()
    assert "## Acceptance length per category: `0001_baseline`" in page
    assert "| case | " + " | ".join(header[1:]) + " |" in page
