"""Results files -> one flat pandas table (a row per benchmark per run) for plots and export.

Loading goes through `results.Storage` / `results.load_results` so a reference can be a path,
'latest' or a run number, exactly like `--speedbench-compare`. pandas is imported lazily: it
is only needed by `speedbench report|export` (extra `report`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_speedbench.errors import UsageError
from pytest_speedbench.results.gates import PARAM_KEYS
from pytest_speedbench.results.document import Storage, load_results


@dataclass(frozen=True)
class Run:
    """One loaded results file and the short label plots and tables use for it."""

    label: str
    path: Path
    doc: Mapping[str, Any]


def load_runs(refs: Sequence[str | os.PathLike[str]], storage: str | os.PathLike[str] = ".speedbench") -> list[Run]:
    """Load every reference; labels are file stems, made unique with a #n suffix."""
    if not refs:
        raise UsageError("no results files given; pass paths, 'latest' or run numbers")
    runs: list[Run] = []
    seen: dict[str, int] = {}
    for ref in refs:
        path = Storage(storage).resolve(ref)
        label = path.stem
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label}#{seen[label]}"
        runs.append(Run(label, path, load_results(path)))
    return runs


def case_id(bench: Mapping[str, Any]) -> str:
    """The matrix case id (`param`), else the test name."""
    return str(bench.get("param") or bench.get("name") or "?")


def flatten_benchmark(bench: Mapping[str, Any]) -> dict[str, Any]:
    """One benchmark entry -> flat scalar columns (lists/maps become `key.sub`, CIs `_lo/_hi`)."""
    row: dict[str, Any] = {"case": case_id(bench), "name": bench.get("name"), "group": bench.get("group")}
    params = bench.get("params") or {}
    for key in PARAM_KEYS:
        row[key] = params.get(key)
    info = bench.get("extra_info") or {}
    stability = info.get("stability") if isinstance(info.get("stability"), Mapping) else {}
    #: speedups of an unstable case are not trusted: a column of its own, so no table reads them silently
    row["unstable"] = stability.get("verdict") == "unstable"
    for key, value in info.items():
        if key == "per_request":  # one row per request: `speedbench sweep|predict` read it, tables do not
            continue
        if key == "gate" and isinstance(value, Mapping):
            row["gate.verdict"] = value.get("verdict")
            row["gate.reasons"] = "; ".join(str(r) for r in value.get("reasons") or [])
        elif key.endswith("_ci95") and isinstance(value, (list, tuple)) and len(value) == 2:
            row[f"{key}_lo"], row[f"{key}_hi"] = value
        elif key.endswith("_ci95") and isinstance(value, Mapping):
            for sub, pair in value.items():
                if isinstance(pair, (list, tuple)) and len(pair) == 2:
                    row[f"{key}.{sub}_lo"], row[f"{key}.{sub}_hi"] = pair
        elif key == "conditional_acceptance_rate" and isinstance(value, (list, tuple)):
            for i, rate in enumerate(value, start=1):
                row[f"{key}.{i}"] = rate
        elif isinstance(value, Mapping):  # summaries {mean, std, ...}, per-category maps, histogram
            for sub, v in value.items():
                if isinstance(v, (int, float, str, bool)) or v is None:
                    row[f"{key}.{sub}"] = v
        elif isinstance(value, (list, tuple)):
            row[key] = json.dumps(value)
        else:
            row[key] = value
    stats = bench.get("stats") or {}
    for key in ("mean", "median", "min", "max", "stddev", "rounds"):
        if key in stats:
            row[f"stats.{key}"] = stats[key]
    return row


def rows(runs: Iterable[Run]) -> list[dict[str, Any]]:
    """Flat rows of every benchmark of every run, with run-level columns first."""
    out = []
    for run in runs:
        commit = run.doc.get("commit_info") or {}
        machine = run.doc.get("machine_info") or {}
        gpus = machine.get("gpus") or []
        base = {
            "run": run.label,
            "file": str(run.path),
            "datetime": run.doc.get("datetime"),
            "commit": commit.get("id"),
            "branch": commit.get("branch"),
            "dirty": commit.get("dirty"),
            "machine": machine.get("node"),
            "gpu": gpus[0].get("name") if gpus and isinstance(gpus[0], Mapping) else None,
        }
        for bench in run.doc.get("benchmarks", []):
            out.append({**base, **flatten_benchmark(bench)})
    return out


def runs_dataframe(runs: Iterable[Run]) -> Any:
    """A pandas DataFrame of `rows(runs)`; columns missing from some runs are NaN/None."""
    pd = require_pandas()
    frame = pd.DataFrame(rows(runs))
    for column in ("batch_size",):
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    return frame


def require_pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise UsageError("this command needs pandas: pip install 'pytest-speedbench[report]'") from None
    return pandas


def write_table(frame: Any, out: Path, fmt: str) -> Path:
    """Write `frame` as csv or parquet (parquet needs pyarrow)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        frame.to_csv(out, index=False)
    elif fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UsageError("parquet export needs pyarrow: pip install pyarrow") from None
        # object columns mixing None/str/float trip pyarrow; make them uniform strings
        frame = frame.copy()
        for column in frame.columns:
            if frame[column].dtype == object:
                kinds = {type(v) for v in frame[column].dropna()}
                if len(kinds) > 1:
                    frame[column] = frame[column].map(lambda v: None if v is None else str(v))
        frame.to_parquet(out, index=False)
    else:
        raise UsageError(f"unknown export format {fmt!r}; valid formats: csv, parquet")
    return out
