"""The results document: pytest-benchmark-compatible JSON, machine/commit/GPU info, storage.

The top level follows pytest-benchmark's saved-run format (`version, datetime, machine_info,
commit_info, benchmarks[]`) so `pytest-benchmark list|compare --storage file://<root>` can read
our files; everything speedbench-specific lives in each entry's `extra_info` and in the
top-level `speedbench` section. Files are written atomically (temp file + fsync + rename) and
numbered under a lock, so a crash or a full disk never leaves a truncated file and a new run
never overwrites an earlier one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pytest_benchmark.stats import Stats

from pytest_speedbench import __version__
from pytest_speedbench.errors import SpeedbenchError, UsageError
from pytest_speedbench.results.status import Pick, pick_latest

try:  # orjson is a declared dependency; json keeps the module importable without it
    import orjson
except ImportError:  # pragma: no cover
    orjson = None  # type: ignore[assignment]

SCHEMA_VERSION = 1
_RUN_NAME = re.compile(r"^(\d{4})_.*\.json$")
_SUBPROCESS_TIMEOUT_S = 10


# --- machine and commit info ------------------------------------------------------------


def machine_id() -> str:
    """pytest-benchmark's storage folder name, e.g. 'Linux-CPython-3.11-64bit'."""
    return "-".join(
        (
            platform.system(),
            platform.python_implementation(),
            ".".join(platform.python_version_tuple()[:2]),
            platform.architecture()[0],
        )
    )


def _cpu_brand() -> str | None:
    """CPU model name from /proc/cpuinfo (cheap; py-cpuinfo takes a second or more)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def parse_nvidia_smi(text: str) -> list[dict[str, Any]]:
    """Rows of `nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader`."""
    gpus = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 4 or not fields[0].isdigit():
            continue
        index, name, memory, driver = fields
        mib = re.match(r"^(\d+)\s*MiB$", memory)
        gpus.append(
            {
                "index": int(index),
                "name": name,
                "memory_total": memory,
                "memory_total_mib": int(mib.group(1)) if mib else None,
                "driver_version": driver,
            }
        )
    return gpus


def gpu_info() -> list[dict[str, Any]]:
    """GPUs seen by nvidia-smi; [] when it is absent or fails (no GPU is a normal setup)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        proc = subprocess.run(
            [exe, "--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=_SUBPROCESS_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_nvidia_smi(proc.stdout) if proc.returncode == 0 else []


def machine_info() -> dict[str, Any]:
    """pytest-benchmark's machine_info fields plus `gpus`."""
    return {
        "node": platform.node(),
        "processor": platform.processor(),
        "machine": platform.machine(),
        "python_compiler": platform.python_compiler(),
        "python_implementation": platform.python_implementation(),
        "python_implementation_version": platform.python_version(),
        "python_version": platform.python_version(),
        "python_build": list(platform.python_build()),
        "release": platform.release(),
        "system": platform.system(),
        "cpu": {"count": os.cpu_count(), "brand_raw": _cpu_brand(), "arch": platform.machine()},
        "gpus": gpu_info(),
    }


def _git(path: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(path), *args],
            capture_output=True,
            text=True,
            timeout=_SUBPROCESS_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def commit_info(path: str | os.PathLike[str] = ".") -> dict[str, Any]:
    """pytest-benchmark-like commit_info of the checkout containing `path`; id None outside git."""
    path = Path(path).resolve()
    commit = _git(path, "rev-parse", "HEAD")
    if commit is None:
        return {"id": None, "time": None, "author_time": None, "dirty": False, "project": path.name, "branch": None}
    branch = _git(path, "rev-parse", "--abbrev-ref", "HEAD")
    toplevel = _git(path, "rev-parse", "--show-toplevel")
    origin = _git(path, "config", "--get", "remote.origin.url")
    if origin:
        project = [p for p in re.split(r"[/:\s\\]|\.git$", origin) if p][-1]
    else:
        project = Path(toplevel).name if toplevel else path.name
    return {
        "id": commit,
        "time": _git(path, "show", "-s", "--pretty=format:%cI", "HEAD"),
        "author_time": _git(path, "show", "-s", "--pretty=format:%aI", "HEAD"),
        # like `git describe --dirty`: tracked changes only, untracked files do not count
        "dirty": bool(_git(path, "status", "--porcelain", "--untracked-files=no")),
        "project": project,
        "branch": "(detached head)" if branch == "HEAD" else branch,
    }


# --- benchmark entries and the document ------------------------------------------------------


def e2e_stats(values: list[float]) -> dict[str, Any]:
    """pytest-benchmark's `stats` block over per-request E2E seconds (one round per request)."""
    clean = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not clean:  # every request failed: a well-formed but empty block
        zero: dict[str, Any] = {field: 0.0 for field in Stats.fields}
        zero.update(rounds=0, iqr_outliers=0, stddev_outliers=0, outliers="0;0", data=[], iterations=1)
        return zero
    s = Stats()
    for v in clean:
        s.update(v)
    out = s.as_dict()
    out["data"] = clean
    out["iterations"] = 1
    return out


def _param_from_name(name: str) -> str | None:
    match = re.search(r"\[(.*)\]$", name)
    return match.group(1) if match else None


def benchmark_entry(
    name: str,
    fullname: str,
    group: str | None,
    params: Mapping[str, Any],
    e2e_values: list[float],
    extra_info: Mapping[str, Any],
    options: Mapping[str, Any],
    param: str | None = None,
) -> dict[str, Any]:
    """One `benchmarks[]` entry; `param` defaults to the test id inside `name`'s brackets."""
    return {
        "group": group,
        "name": name,
        "fullname": fullname,
        "params": dict(params),
        "param": param if param is not None else _param_from_name(name),
        "extra_info": dict(extra_info),
        "options": dict(options),
        "stats": e2e_stats(e2e_values),
    }


def results_document(
    benchmarks: list[dict[str, Any]],
    speedbench_section: Mapping[str, Any],
    *,
    machine: dict[str, Any] | None = None,
    commit: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The whole saved run; machine/commit info are gathered unless given."""
    return {
        "machine_info": machine if machine is not None else machine_info(),
        "commit_info": commit if commit is not None else commit_info(),
        "benchmarks": benchmarks,
        "datetime": (now or datetime.now(timezone.utc)).isoformat(),
        "version": __version__,
        "speedbench": {"schema_version": SCHEMA_VERSION, **speedbench_section},
    }


def sanitize(value: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, numpy scalars/arrays -> Python, tuples -> lists."""
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitize(v) for v in value]
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # numpy scalar or array
        return sanitize(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value


def dumps(document: Any) -> bytes:
    """Indented UTF-8 JSON of `document` with NaN written as null."""
    clean = sanitize(document)
    if orjson is not None:
        return orjson.dumps(clean, option=orjson.OPT_INDENT_2) + b"\n"
    return (json.dumps(clean, indent=2, allow_nan=False) + "\n").encode()


# --- files ----------------------------------------------------------------------------------


def write_atomic(path: str | os.PathLike[str], document: Any) -> Path:
    """Write `document` to `path` via a temp file in the same folder, fsync and os.replace.

    On any failure the temp file is removed, a previous file at `path` is left untouched, and
    a SpeedbenchError names the path and the cause.
    """
    path = Path(path)
    try:
        data = dumps(document)
    except (TypeError, ValueError) as exc:
        raise SpeedbenchError(f"cannot write results to {path}: not serializable as JSON ({exc})") from exc
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as exc:
        raise SpeedbenchError(f"cannot write results to {path}: {exc}") from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; best effort (not every OS/filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a saved run; UsageError (naming the file) when missing, malformed or not ours."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read results file {path}: {exc.strerror or exc}") from exc
    try:
        doc = orjson.loads(raw) if orjson is not None else json.loads(raw)
    except ValueError as exc:
        raise UsageError(f"results file {path} is not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
        raise UsageError(f"{path} is not a results file: expected a JSON object with a 'benchmarks' list")
    return doc


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Exclusive lock on `folder` across processes (xdist workers, parallel sessions)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: O_EXCL below still prevents overwrites
        yield
        return
    with open(folder / ".speedbench.lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class Storage:
    """Autosave folder laid out like pytest-benchmark's: `root/<machine id>/NNNN_<commit>_<time>.json`."""

    def __init__(self, root: str | os.PathLike[str], machine: str | None = None) -> None:
        self.root = Path(root)
        self.folder = self.root / (machine or machine_id())

    def runs(self) -> list[Path]:
        """Saved runs in this machine's folder, by number (empty reservations excluded)."""
        return sorted(p for p in self._numbered() if p.stat().st_size > 0)

    def _numbered(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return [p for p in self.folder.iterdir() if _RUN_NAME.match(p.name) and p.is_file()]

    def reserve(self, commit_id: str | None = None, now: datetime | None = None, name: str | None = None) -> Path:
        """Create (empty, O_EXCL) and return the next free `NNNN_<commit8>_<time>.json`, or
        `NNNN_<name>.json` for a named run (pytest-benchmark's `--benchmark-save=NAME` form)."""
        stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d_%H%M%S")
        tag = name or f"{commit_id[:8] if commit_id else 'nocommit'}_{stamp}"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with _locked(self.folder):
                numbers = [int(_RUN_NAME.match(p.name).group(1)) for p in self._numbered()]
                number = max(numbers, default=0) + 1
                while True:
                    candidate = self.folder / f"{number:04d}_{tag}.json"
                    try:
                        os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                        return candidate
                    except FileExistsError:
                        number += 1
        except OSError as exc:
            raise SpeedbenchError(f"cannot create a results file under {self.folder}: {exc}") from exc

    def save(self, document: Mapping[str, Any]) -> Path:
        """Reserve a new number and write `document` there atomically."""
        commit = (document.get("commit_info") or {}).get("id")
        path = self.reserve(commit)
        try:
            return write_atomic(path, document)
        except SpeedbenchError:
            with contextlib.suppress(OSError):
                if path.stat().st_size == 0:
                    path.unlink()
            raise

    def resolve(self, ref: str | os.PathLike[str]) -> Path:
        """A saved run from a path, 'latest' (the newest complete run, see `latest`), its number
        ('0003' or '3') or its name (`--speedbench-save=NAME`; the newest run of that name)."""
        ref_str = str(ref)
        candidate = Path(ref_str)
        if candidate.is_file():
            return candidate
        runs = self.runs()
        if ref_str == "latest" and runs:
            pick = self.latest()
            if pick.path is not None:
                return pick.path
            raise UsageError(f"'latest': no complete run in {self.folder}; "
                             + "; ".join(f"{p.name}: {why}" for p, why in pick.skipped))
        if ref_str.isdigit():
            matches = [p for p in runs if int(p.name[:4]) == int(ref_str)]
            if len(matches) == 1:
                return matches[0]
        named = [p for p in runs if p.name[5:] == f"{ref_str}.json"]  # --speedbench-save=NAME
        if named:
            return named[-1]
        available = ", ".join(p.name for p in runs) or "none"
        raise UsageError(
            f"no saved run {ref_str!r} in {self.folder}; give a file path, 'latest', a run number or a run name. "
            f"Available runs: {available}"
        )

    def latest(self) -> Pick:
        """The newest complete run and the newer runs passed over (failed, interrupted, running)."""
        def newest_first() -> Iterator[tuple[Path, dict[str, Any] | None]]:
            for path in reversed(self.runs()):
                try:
                    yield path, load_results(path)
                except UsageError:
                    yield path, None

        return pick_latest(newest_first())

    def load(self, ref: str | os.PathLike[str]) -> dict[str, Any]:
        """Load the saved run named by `ref` (see `resolve`)."""
        return load_results(self.resolve(ref))
