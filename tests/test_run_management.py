"""Run management as pytest-benchmark users expect: named runs, `speedbench list`, `speedbench
prune --keep N`, and the results folder from SPEEDBENCH_STORAGE."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_speedbench.cli import main
from pytest_speedbench.results import document as R
from pytest_speedbench.settings.options import build_settings

PARAMS = {"engine": "hf", "drafter": "ngram", "split": "qualitative", "bucket": None, "batch_size": 1,
          "temperature": 0.0}


def doc(status: str, *, name: str | None = None, e2e: float = 1.0, reason: str = "") -> dict:
    entry = R.benchmark_entry("t[hf-ngram]", "t.py::t[hf-ngram]", "g", PARAMS, [e2e], {"acceptance_length": 2.0}, {},
                              param="hf-ngram-qualitative-bs1-t0")
    section = {"config": {"engine": ["hf"], "drafter": ["none", "ngram"], "category": ["coding"], "output_len": 32,
                          "dataset": "bundled"},
               "run": {"status": status, "reason": reason, "name": name,
                       "cases": {"selected": 1, "measured": 1 if status == "complete" else 0}}}
    return R.results_document([entry], section, machine={"cpu": {}}, commit={"id": "0123456789abcdef", "dirty": False})


def test_named_runs_list_and_prune(tmp_path: Path, capsys):
    storage = R.Storage(tmp_path)
    first = storage.save(doc("complete", e2e=1.0))
    named_doc = doc("complete", name="before-upgrade", e2e=2.0)
    named = storage.reserve("0123456789abcdef", name="before-upgrade")
    R.write_atomic(named, named_doc)
    storage.save(doc("failed", reason="1 of 1 case(s) errored"))
    assert named.name == "0002_before-upgrade.json"
    assert storage.resolve("before-upgrade") == named  # a name works wherever a number does
    assert storage.resolve("latest") == named  # 0003 failed

    assert main(["list", "--storage", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["run", "name", "commit", "date", "status", "cases", "settings"]
    rows = {line.split()[0]: line for line in lines[2:5]}
    assert set(rows) == {"0001", "0002", "0003"}
    assert "before-upgrade" in rows["0002"] and " complete " in rows["0002"] and " 1/1 " in rows["0002"]
    assert " failed " in rows["0003"] and " 0/1 " in rows["0003"] and "01234567" in rows["0003"]
    assert "engine=hf, drafter=none,ngram, category=coding, output_len=32" in rows["0001"]  # a one-category run shows
    assert lines[-1] == "latest = 0002_before-upgrade.json"

    assert main(["prune", "--keep", "2", "--storage", str(tmp_path), "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"would remove {first.name}"
    assert first.exists()
    assert main(["prune", "--keep", "2", "--storage", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"removed {first.name}", f"kept 2 run(s) in {storage.folder}"]
    assert [p.name[:4] for p in storage.runs()] == ["0002", "0003"]
    assert main(["prune", "--keep", "0", "--storage", str(tmp_path)]) == 2


def test_results_folder_from_the_environment(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("SPEEDBENCH_STORAGE", str(tmp_path / "shared"))
    assert build_settings({}).storage == str(tmp_path / "shared")
    assert build_settings({"storage": "mine"}).storage == "mine"  # the option wins
    R.Storage(tmp_path / "shared").save(doc("complete"))
    assert main(["list"]) == 0
    assert "0001" in capsys.readouterr().out


def test_a_bad_run_name_is_a_usage_error():
    from pytest_speedbench.errors import UsageError

    with pytest.raises(UsageError, match="'a/b' is not a valid run name"):
        build_settings({"save": "a/b"})
