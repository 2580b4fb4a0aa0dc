"""Run status: whether a saved run measured everything it selected, and what it selected.

Why: a nightly job compares against a saved run and must never take a broken one (an engine
that never started, a Ctrl-C, a crash) for a baseline or for "tonight". Every saved run carries
`speedbench.run = {status, reason, selection, cases}`:

- `running`: written with each case while the session runs; a file left so was killed or is
  still being written;
- `complete`: every selected case ran and was measured (a case may still have regressed);
- `failed`: some case errored (engine start, dataset) or had failed requests;
- `interrupted`: the session stopped before every selected case ran (Ctrl-C, `-x`, an exit).

`latest` means the newest complete run (`pick_latest`); the runs it passed over are named with
the reason. Pure functions over documents; the plugin fills the section, Storage reads it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUNNING, COMPLETE, FAILED, INTERRUPTED = "running", "complete", "failed", "interrupted"
STATUSES = (RUNNING, COMPLETE, FAILED, INTERRUPTED)
#: a file saved before run status existed
UNKNOWN = "unknown"


def run_section(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    section = (doc.get("speedbench") or {}).get("run") if isinstance(doc, Mapping) else None
    return section if isinstance(section, Mapping) else {}


def status_of(doc: Mapping[str, Any]) -> tuple[str, str]:
    """(status, reason) of a saved run; `unknown` for a file without a run section."""
    section = run_section(doc)
    status = section.get("status")
    if status not in STATUSES:
        return UNKNOWN, "no run status recorded (saved by an older pytest-speedbench)"
    reason = str(section.get("reason") or "")
    if status == RUNNING:
        reason = reason or "never finished: killed, crashed, or still running"
    return status, reason


def describe(doc: Mapping[str, Any]) -> str:
    """'complete' or 'failed: 1 of 1 case(s) errored: ...' for terminal lines."""
    status, reason = status_of(doc)
    return f"{status}: {reason}" if reason and status != COMPLETE else status


def is_error_entry(entry: Mapping[str, Any]) -> bool:
    """An entry recorded for a case that could not be measured (setup error, crash)."""
    return "error" in (entry.get("extra_info") or {})


def finish(entries: Sequence[Mapping[str, Any]], selected: Sequence[str], skipped: Mapping[str, str],
           *, interrupted: str | None = None) -> dict[str, Any]:
    """The final status from what the session recorded.

    `selected`: case ids pytest was to run; `skipped`: case id -> skip reason; `interrupted`: why
    the session stopped early (None when it ran to its end). A selected case that neither has an
    entry nor was skipped never ran, which only an early stop explains.
    """
    ids = {str(e.get("param") or e.get("name")): e for e in entries}
    errored = {i: str((e.get("extra_info") or {}).get("error")) for i, e in ids.items() if is_error_entry(e)}
    failed_requests = [i for i, e in ids.items() if i not in errored and _failed_requests(e)]
    never_ran = [c for c in selected if c not in ids and c not in skipped]
    cases = {"selected": len(selected), "measured": len(ids) - len(errored), "errored": errored,
             "failed_requests": failed_requests, "skipped": dict(skipped), "never_ran": never_ran}
    if interrupted is not None or never_ran:
        why = interrupted or "the session stopped early"
        if never_ran:
            why += f"; {len(never_ran)} of {len(selected)} selected case(s) never ran"
        return {"status": INTERRUPTED, "reason": why, "cases": cases}
    problems = []
    if errored:
        first = next(iter(errored.items()))
        problems.append(f"{len(errored)} of {len(selected) or len(ids)} case(s) errored; "
                        f"{first[0]}: {first[1].splitlines()[0] if first[1] else ''}")
    if failed_requests:
        problems.append(f"requests failed in {', '.join(failed_requests)}")
    if problems:
        return {"status": FAILED, "reason": "; ".join(problems), "cases": cases}
    return {"status": COMPLETE, "reason": "", "cases": cases}


def _failed_requests(entry: Mapping[str, Any]) -> bool:
    gate = (entry.get("extra_info") or {}).get("gate") or {}
    return any("requests failed" in str(r) for r in gate.get("reasons") or [])


@dataclass(frozen=True)
class Pick:
    """The run `latest` resolved to, and the newer runs passed over, each with why."""

    path: Path | None
    skipped: tuple[tuple[Path, str], ...] = ()

    def lines(self, what: str = "latest") -> list[str]:
        """What the terminal says: the run picked and every run skipped."""
        out = [f"speedbench: {what} = {self.path.name}" if self.path else f"speedbench: {what}: no complete run"]
        out += [f"speedbench:   skipped {p.name}: {why}" for p, why in self.skipped]
        return out


def pick_latest(runs: Iterable[tuple[Path, Mapping[str, Any] | None]]) -> Pick:
    """The newest run whose status is complete; `runs` newest first (read lazily: the search
    stops at the first complete run), a None document unreadable."""
    skipped: list[tuple[Path, str]] = []
    for path, doc in runs:
        if doc is None:
            skipped.append((path, "unreadable"))
            continue
        status, reason = status_of(doc)
        if status == COMPLETE:
            return Pick(path, tuple(skipped))
        skipped.append((path, f"{status}" + (f" ({reason})" if reason else "")))
    return Pick(None, tuple(skipped))
