"""Which baseline cases a run failed to measure: missing means failed.

Why: a gate that only judges the cases present passes a night whose engine never started (no
case, nothing regressed). Each case the baseline measured must be measured again, or the gate
fails naming it; the exceptions are cases the run deliberately left out (`-k`/`-m`, recorded in
its run section) and what the user allows (`--allow-missing`). Pure functions over documents.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_speedbench.results.gates import find_baseline_entry
from pytest_speedbench.results.status import is_error_entry, run_section

ABSENT, ERRORED, UNMEASURED, LEFT_OUT = "absent", "errored", "unmeasured", "left out"


@dataclass(frozen=True)
class Gap:
    """A baseline case the run has no measurement of."""

    case: str
    kind: str  # absent | errored | unmeasured | left out
    detail: str = ""

    @property
    def allowed(self) -> bool:
        """A case the run's own selection left out is reported, never failed."""
        return self.kind == LEFT_OUT

    def message(self) -> str:
        text = {ABSENT: "not in this run", ERRORED: "errored in this run", UNMEASURED: "not measured in this run",
                LEFT_OUT: "left out by this run's selection"}[self.kind]
        return f"{self.case}: measured in the baseline, {text}" + (f" ({self.detail})" if self.detail else "")


def case_name(entry: Mapping[str, Any]) -> str:
    return str(entry.get("param") or entry.get("name") or "?")


def _measured(entry: Mapping[str, Any]) -> bool:
    extra = entry.get("extra_info") or {}
    return not is_error_entry(entry) and bool(extra.get("num_requests"))


def gaps(baseline: Mapping[str, Any], current: Sequence[Mapping[str, Any]], *,
         left_out: Mapping[str, str] | None = None, skipped: Mapping[str, str] | None = None) -> list[Gap]:
    """The baseline's measured cases that `current` (benchmark entries) lacks, in baseline order.

    `left_out`: case id -> why, for cases the run's selection deselected (allowed); `skipped`:
    case id -> skip reason (a skipped case is still absent). Baseline cases that errored in the
    baseline have nothing to compare and are not gaps.
    """
    left_out, skipped = left_out or {}, skipped or {}
    doc = {"benchmarks": list(current)}
    out = []
    for base in baseline.get("benchmarks") or []:
        if not isinstance(base, Mapping) or not _measured(base):
            continue
        name = case_name(base)
        entry = find_baseline_entry(doc, base.get("params") or {}, name) if base.get("params") else \
            find_baseline_entry(doc, {}, name)
        if entry is None:
            if name in left_out:
                out.append(Gap(name, LEFT_OUT, left_out[name]))
            else:
                out.append(Gap(name, ABSENT, f"skipped: {skipped[name]}" if name in skipped else ""))
        elif is_error_entry(entry):
            error = str((entry.get("extra_info") or {}).get("error") or "")
            out.append(Gap(name, ERRORED, error.splitlines()[0] if error else ""))
        elif not _measured(entry):
            out.append(Gap(name, UNMEASURED, "no successful request"))
    return out


def left_out_of(doc: Mapping[str, Any]) -> dict[str, str]:
    """Case id -> why, for the cases a saved run's selection (-k, -m, --deselect) left out."""
    selection = run_section(doc).get("selection") or {}
    how = ", ".join(f"{k} {v!r}" for k, v in (("-k", selection.get("keyword")), ("-m", selection.get("markexpr"))) if v)
    return {str(c): how or "deselected" for c in selection.get("deselected") or []}
