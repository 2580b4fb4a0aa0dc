"""The metric catalogue is the one list of metrics: a row added there shows up everywhere.

The end-to-end test adds a dummy AL-family metric through one monkeypatched catalogue row (with
its own formula over the reconciled step view) and finds it in the terminal summary, the JUnit
properties, the results file, the gates (a threshold on it fails the case), `speedbench compare`
and the report page, with no other edit: nothing in metrics/run.py names it.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import httpcore  # noqa: F401  (imported at collection: see tests/test_plugin_gates.py)
import pytest
from conftest import REPO, SUITE

from pytest_speedbench import cli
from pytest_speedbench.errors import UsageError
from pytest_speedbench.metrics import catalogue
from pytest_speedbench.results import gates

try:  # imported at collection, not inside the pytester run, which drops modules first imported there
    import matplotlib.figure  # noqa: F401
    import pandas  # noqa: F401
except ImportError:  # pragma: no cover - the report extra is missing
    pass

DUMMY = catalogue.MetricSpec(
    "dummy_metric", "widgets", catalogue.HIGHER, "dummy", has_ci=False,
    shown={catalogue.TABLE: (), catalogue.COMPARE: (), catalogue.REPORT: (), catalogue.JUNIT: ()},
    # tokens per decode step over requests with a decode step, plus 40: the view's reconciled D
    compute=lambda view: 40.0 + view.tokens / view.decode_steps + 0 * len(view.requests),
)


def test_docs_metric_table_is_the_catalogue():
    text = (REPO / "docs" / "gates.md").read_text()
    assert catalogue.markdown_table() in text


def test_docs_metrics_reference_is_the_catalogue():
    """docs/metrics.md's table of every extra_info key is generated (catalogue.reference_table)."""
    text = (REPO / "docs" / "metrics.md").read_text()
    generated = text.split("<!-- metric-table: generated -->\n", 1)[1].split("\n<!-- /metric-table -->", 1)[0]
    assert generated == catalogue.reference_table(), "regenerate docs/metrics.md's table: catalogue.reference_table()"


def test_every_row_declares_its_keys_once():
    keys = [k for m in catalogue.METRICS for k in m.keys()]
    assert len(keys) == len(set(keys)) and "acceptance_length_ci95" in keys and "gate" in keys
    assert catalogue.undeclared({"acceptance_length": 2.0, "acceptance_length_by_category": {}, "mystery": 1}) == [
        "mystery"]
    assert not any(m.gated for m in catalogue.METRICS if m.kind == catalogue.DIAGNOSTIC)


def test_every_gated_path_has_a_direction_and_a_row():
    names = gates.metric_names()
    assert "ttft_s.p99" in names and "acceptance_length" in names and "num_requests" not in names
    assert gates.bad_direction("acceptance_length") == -1
    assert gates.bad_direction("ttft_s.p99") == +1
    assert gates.bad_direction("user_tps.p50") == -1 and gates.bad_direction("user_tps.std") == +1
    assert gates.bad_direction("acceptance_length_by_category.math") == -1
    with pytest.raises(UsageError, match="ttft_s is a summary"):
        gates.check_metric("ttft_s", "here")
    with pytest.raises(UsageError, match="unknown metric 'al_source'"):
        gates.check_metric("al_source", "here")


def test_views_name_existing_rows():
    for view in catalogue.VIEWS:
        for path in catalogue.paths(view):
            assert catalogue.spec_for(path) is not None, path


def test_dummy_metric_appears_everywhere(monkeypatch, pytester: pytest.Pytester, tiny_tokenizer_dir: Path,
                                         prompts_file: Path, fake_sglang, capsys):
    monkeypatch.setattr(catalogue, "METRICS", (*catalogue.METRICS, DUMMY))
    assert "dummy_metric" in gates.metric_names()
    pytester.makepyfile(test_speedbench=SUITE)
    pytester.makefile(".yaml", speedbench="thresholds:\n  - match: {engine: sglang}\n    dummy_metric: {min: 1000}\n")
    ar = fake_sglang("--algorithm", "NONE", "--step-ms", "2")
    out, junit = pytester.path / "run.json", pytester.path / "junit.xml"
    result = pytester.runpytest(
        "--engine=sglang", f"--tokenizer={tiny_tokenizer_dir}", f"--dataset={prompts_file}", "--num-prompts=2",
        "--split=qualitative", "--temperature=0", "--warmup=0", "--output-len=8", "--drafter=none",
        f"--server-url={ar.url}", f"--speedbench-json={out}", f"--junitxml={junit}",
        "-p", "no:cacheprovider", "-W", "ignore::Warning",
    )
    # the gates: a threshold on the new metric fails the case, naming it
    result.assert_outcomes(failed=1)
    entry = json.loads(out.read_text())["benchmarks"][0]
    value = entry["extra_info"]["dummy_metric"]
    assert value == pytest.approx(40.0 + entry["extra_info"]["acceptance_length_pooled"])
    assert catalogue.undeclared(entry["extra_info"]) == []  # every key of the entry has a row
    assert any(f"dummy_metric: {gates.fmt(value)} below minimum 1000" in r for r in entry["extra_info"]["gate"]["reasons"])
    # the terminal summary: its own column
    head = next(line for line in result.outlines if line.startswith("case "))
    assert "dummy" in head.split()
    row = next(line for line in result.outlines if line.startswith("sglang-none-qualitative"))
    assert f"{value:.2f}" in row.split()
    # the JUnit properties
    props = {p.get("name"): p.get("value") for p in ET.parse(junit).iter("property")}
    assert props["speedbench.dummy_metric"] == f"{value:.6g}"
    # speedbench compare: a row for it (default metrics) and a rule on it
    capsys.readouterr()
    again = out.with_name("again.json")  # the same figures in another file (a file against itself gates nothing)
    again.write_text(out.read_text())
    code = cli.main(["compare", str(out), str(again), "--fail", "dummy_metric:-1%"])
    text = capsys.readouterr().out
    assert code == 0
    assert any(line.split()[:2] == ["dummy_metric", gates.fmt(value)] for line in text.splitlines()), text
    # the report page: a summary column
    pytest.importorskip("matplotlib")
    assert cli.main(["report", str(out), "--out", str(pytester.path / "report"), "--format", "md"]) == 0
    page = (pytester.path / "report" / "report.md").read_text()
    header = next(line for line in page.splitlines() if line.startswith("| case") or line.startswith("| run"))
    assert "| dummy |" in header
