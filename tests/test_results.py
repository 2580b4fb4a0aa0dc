"""Results document, machine/commit info, atomic writes, storage, pytest-benchmark compatibility."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

import pytest_speedbench
from pytest_speedbench.results import document as R
from pytest_speedbench.errors import SpeedbenchError, UsageError

NAME = "test_speed[vllm-eagle3-qualitative-bs1-t0]"
FULLNAME = f"benchmarks/test_speed.py::{NAME}"
PARAMS = {"engine": "vllm", "drafter": "eagle3", "split": "qualitative", "bucket": None, "batch_size": 1, "temperature": 0.0}
MACHINE = {"node": "n", "system": "Linux", "gpus": []}
COMMIT = {"id": "0123456789abcdef", "time": None, "author_time": None, "dirty": False, "project": "p", "branch": "main"}


def entry(e2e=(0.5, 0.7, 0.6), **extra):
    info = {"acceptance_length": 2.5, **extra}
    return R.benchmark_entry(NAME, FULLNAME, "vllm qualitative", PARAMS, list(e2e), info, {"warmup": 2})


def document(*entries, commit=COMMIT, status="complete", reason=""):
    run = {"status": status, "reason": reason}
    return R.results_document(list(entries) or [entry()], {"config": {"engines": ["vllm"]}, "run": run},
                              machine=MACHINE, commit=commit)


# --- machine and commit info --------------------------------------------------------------


def test_machine_id_format():
    assert re.fullmatch(r"[A-Za-z]+-[A-Za-z]+-\d+\.\d+-\d+bit", R.machine_id())


def test_parse_nvidia_smi():
    text = "0, NVIDIA H100 80GB HBM3, 81559 MiB, 550.54.15\n1, NVIDIA H100 80GB HBM3, 81559 MiB, 550.54.15\n\n"
    gpus = R.parse_nvidia_smi(text)
    assert [g["index"] for g in gpus] == [0, 1]
    assert gpus[0] == {
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "memory_total": "81559 MiB",
        "memory_total_mib": 81559,
        "driver_version": "550.54.15",
    }
    assert R.parse_nvidia_smi("NVIDIA-SMI has failed because it couldn't communicate") == []


def test_gpu_info_uses_nvidia_smi_on_path(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho '0, Fake GPU, 1024 MiB, 1.2.3'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert R.gpu_info() == [
        {"index": 0, "name": "Fake GPU", "memory_total": "1024 MiB", "memory_total_mib": 1024, "driver_version": "1.2.3"}
    ]
    fake.write_text("#!/bin/sh\necho 'no devices' >&2\nexit 9\n")
    assert R.gpu_info() == []


def test_gpu_info_without_nvidia_smi(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert R.gpu_info() == []


def test_machine_info_fields():
    info = R.machine_info()
    for key in ("node", "processor", "machine", "python_implementation", "python_version", "release", "system"):
        assert isinstance(info[key], str)
    assert info["cpu"]["count"] == os.cpu_count()
    assert isinstance(info["gpus"], list)


def _git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e"}
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)


def test_commit_info_in_git(tmp_path):
    repo = tmp_path / "proj"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "trunk")
    (repo / "a.txt").write_text("1")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-q", "-m", "one")
    info = R.commit_info(repo)
    assert re.fullmatch(r"[0-9a-f]{40}", info["id"])
    assert info["dirty"] is False
    assert info["branch"] == "trunk"
    assert info["project"] == "proj"
    assert datetime.fromisoformat(info["time"]).tzinfo is not None
    (repo / "untracked.txt").write_text("x")
    assert R.commit_info(repo)["dirty"] is False  # untracked files do not count
    (repo / "a.txt").write_text("2")
    assert R.commit_info(repo)["dirty"] is True


def test_commit_info_outside_git(tmp_path):
    info = R.commit_info(tmp_path)
    assert info["id"] is None and info["dirty"] is False
    assert info["project"] == tmp_path.name


# --- entries and document --------------------------------------------------------------------


def test_benchmark_entry_stats():
    e = entry(e2e=[0.4, 0.2, 0.3, 0.1, float("nan")])
    s = e["stats"]
    assert s["rounds"] == 4 and s["iterations"] == 1
    assert s["min"] == 0.1 and s["max"] == 0.4
    assert s["mean"] == pytest.approx(0.25)
    assert s["median"] == pytest.approx(0.25)
    assert s["total"] == pytest.approx(1.0)
    assert s["ops"] == pytest.approx(4.0)
    assert s["data"] == [0.4, 0.2, 0.3, 0.1]
    assert s["q1"] == pytest.approx(0.15) and s["q3"] == pytest.approx(0.35)
    assert set(s) >= {"iqr", "iqr_outliers", "stddev", "stddev_outliers", "outliers", "ld15iqr", "hd15iqr"}
    assert e["param"] == "vllm-eagle3-qualitative-bs1-t0"
    assert e["params"] == PARAMS and e["group"] == "vllm qualitative"


def test_benchmark_entry_without_requests():
    s = entry(e2e=[])["stats"]
    assert s["rounds"] == 0 and s["data"] == [] and s["ops"] == 0.0


def test_results_document():
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    doc = R.results_document([entry()], {"config": {}}, machine=MACHINE, commit=COMMIT, now=now)
    assert doc["version"] == pytest_speedbench.__version__
    assert doc["datetime"] == "2025-01-02T03:04:05+00:00"
    assert doc["speedbench"] == {"schema_version": 1, "config": {}}
    assert doc["machine_info"] == MACHINE and doc["commit_info"] == COMMIT
    gathered = R.results_document([], {})
    assert "gpus" in gathered["machine_info"] and "id" in gathered["commit_info"]
    assert datetime.fromisoformat(gathered["datetime"]).tzinfo is not None


# --- writing ----------------------------------------------------------------------------------


def test_write_atomic_round_trip_nan_safe(tmp_path):
    path = tmp_path / "r.json"
    doc = document(entry(ci=[float("nan"), np.float64(1.5)], hist={"1": np.int64(3)}, t=(1, 2)))
    R.write_atomic(path, doc)
    loaded = json.loads(path.read_text())
    info = loaded["benchmarks"][0]["extra_info"]
    assert info["ci"] == [None, 1.5] and info["hist"] == {"1": 3} and info["t"] == [1, 2]
    assert R.load_results(path) == loaded
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_write_atomic_failure_keeps_previous_file(tmp_path, monkeypatch, failing):
    path = tmp_path / "r.json"
    R.write_atomic(path, document())
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(R.os, failing, boom)
    with pytest.raises(SpeedbenchError) as excinfo:
        R.write_atomic(path, document(entry(e2e=[9.0])))
    assert str(path) in str(excinfo.value) and "No space left on device" in str(excinfo.value)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # temp file removed


def test_write_atomic_unserializable(tmp_path):
    with pytest.raises(SpeedbenchError, match="not serializable"):
        R.write_atomic(tmp_path / "r.json", {"benchmarks": [object()]})
    assert list(tmp_path.iterdir()) == []


def test_load_results_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"benchmarks": [')
    with pytest.raises(UsageError, match=r"bad\.json is not valid JSON"):
        R.load_results(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(UsageError, match="'benchmarks' list"):
        R.load_results(bad)
    with pytest.raises(UsageError, match="cannot read results file .*missing.json"):
        R.load_results(tmp_path / "missing.json")


# --- storage ----------------------------------------------------------------------------------


def test_storage_numbers_and_names(tmp_path):
    storage = R.Storage(tmp_path / "store")
    now = datetime(2025, 6, 7, 8, 9, 10, tzinfo=timezone.utc)
    first = storage.reserve("0123456789abcdef", now=now)
    assert first.parent == tmp_path / "store" / R.machine_id()
    assert first.name == "0001_01234567_20250607_080910.json"
    second = storage.reserve(None, now=now)
    assert second.name == "0002_nocommit_20250607_080910.json"
    # a later run with an earlier-looking name still gets the next number
    (storage.folder / "0007_x_20000101_000000.json").write_text("{}")
    assert storage.reserve(None, now=now).name.startswith("0008_")


def test_storage_save_never_overwrites(tmp_path):
    storage = R.Storage(tmp_path)
    paths = [storage.save(document(entry(e2e=[float(i + 1)]))) for i in range(3)]
    assert len(set(paths)) == 3
    assert [R.load_results(p)["benchmarks"][0]["stats"]["min"] for p in paths] == [1.0, 2.0, 3.0]
    assert [p.name[:4] for p in paths] == ["0001", "0002", "0003"]


def test_storage_concurrent_reservations_are_unique(tmp_path):
    storage = R.Storage(tmp_path)
    with ThreadPoolExecutor(max_workers=8) as pool:
        paths = list(pool.map(lambda i: storage.reserve(f"commit{i:02d}"), range(16)))
    assert sorted(int(p.name[:4]) for p in paths) == list(range(1, 17))


def test_storage_load(tmp_path):
    storage = R.Storage(tmp_path)
    for i in range(3):
        storage.save(document(entry(e2e=[float(i + 1)])))
    storage.reserve()  # an empty reservation (crashed writer) is not a run
    mins = lambda doc: doc["benchmarks"][0]["stats"]["min"]  # noqa: E731
    assert mins(storage.load("latest")) == 3.0
    assert mins(storage.load("0002")) == 2.0
    assert mins(storage.load("1")) == 1.0
    assert mins(storage.load(storage.runs()[1])) == 2.0
    with pytest.raises(UsageError) as excinfo:
        storage.load("0009")
    message = str(excinfo.value)
    assert "'0009'" in message and "0001_01234567_" in message and "0003_01234567_" in message
    with pytest.raises(UsageError, match="Available runs: none"):
        R.Storage(tmp_path / "empty").load("latest")


def test_latest_is_the_newest_complete_run_and_names_the_runs_it_passed_over(tmp_path):
    storage = R.Storage(tmp_path)
    storage.save(document(entry(e2e=[1.0])))
    storage.save(document(entry(e2e=[2.0])))
    storage.save(document(entry(e2e=[3.0]), status="failed", reason="1 of 1 case(s) errored; x: EngineError: refused"))
    storage.save(document(entry(e2e=[4.0]), status="interrupted", reason="interrupted (Ctrl-C)"))
    storage.save(document(entry(e2e=[5.0]), status="running"))
    legacy = document(entry(e2e=[6.0]))
    del legacy["speedbench"]["run"]
    storage.save(legacy)
    assert storage.load("latest")["benchmarks"][0]["stats"]["min"] == 2.0
    pick = storage.latest()
    assert pick.path.name.startswith("0002_")
    assert [(p.name[:4], why.split(" ")[0]) for p, why in pick.skipped] == [
        ("0006", "unknown"), ("0005", "running"), ("0004", "interrupted"), ("0003", "failed")]
    lines = pick.lines("baseline latest")
    assert lines[0] == f"speedbench: baseline latest = {pick.path.name}"
    assert any("0003_" in line and "failed (1 of 1 case(s) errored; x: EngineError: refused)" in line
               for line in lines[1:])
    assert any("0005_" in line and "never finished" in line for line in lines[1:])
    only_broken = R.Storage(tmp_path / "broken")
    only_broken.save(document(status="failed", reason="engine never started"))
    with pytest.raises(UsageError, match="no complete run .*failed \\(engine never started\\)"):
        only_broken.load("latest")


def test_storage_save_failure_releases_reservation(tmp_path, monkeypatch):
    storage = R.Storage(tmp_path)
    monkeypatch.setattr(R.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(SpeedbenchError, match="No space left"):
        storage.save(document())
    monkeypatch.undo()
    assert storage.runs() == [] and storage._numbered() == []


# --- pytest-benchmark's own tools read our files ------------------------------------------------


def pytest_benchmark_cli(root: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # The CLI builds a pytest Config, which imports every installed pytest11 plugin; disable
    # autoload so this test checks the file format and nothing else.
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "pytest_benchmark", "--storage", f"file://{root}", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pytest_benchmark_list_and_compare_read_our_files(tmp_path):
    root = tmp_path / "store"
    storage = R.Storage(root)
    first = storage.save(document(entry(e2e=[0.5, 0.6, 0.7])))
    second = storage.save(document(entry(e2e=[0.25, 0.3, 0.35]), commit={**COMMIT, "id": None}))

    listed = pytest_benchmark_cli(root, "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert [Path(line).name for line in listed.stdout.split()] == [first.name, second.name]

    compared = pytest_benchmark_cli(root, "compare", cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr
    assert "Failed to load" not in compared.stdout + compared.stderr
    out = compared.stdout
    assert "benchmark 'vllm qualitative': 2 tests" in out
    assert out.count(NAME) == 2
    # means in ms: 600 for the first run, 300 for the second (the faster one, ratio 1.0)
    assert re.search(r"\(0001_0123\w*\)\s.*\b600\.0000 \(2\.00\)", out), out
    assert re.search(r"\(0002_noco\w*\)\s.*\b300\.0000 \(1\.0\)", out), out
