"""The session's run record: what was selected, skipped and left out, and how the run ended.

Why: the saved file must say whether it is a whole run (results/status.py) and what the user
chose to measure, so `latest` never picks a broken run and a gate tells a deliberate `-k` subset
from a case that silently went missing (results/coverage.py). The plugin feeds it from pytest's
hooks; its `section` dict is the results document's `speedbench.run`, updated in place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_speedbench.results import status
from pytest_speedbench.results.coverage import Gap, gaps


@dataclass
class RunRecord:
    section: dict[str, Any] = field(default_factory=lambda: {"status": status.RUNNING, "reason": ""})
    selected: list[str] = field(default_factory=list)
    deselected: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    #: baseline cases this run lacks (set at the session's end when gating against a baseline)
    gaps: list[Gap] = field(default_factory=list)

    def select(self, selected: Sequence[str], deselected: Sequence[str], keyword: str | None,
               markexpr: str | None) -> None:
        """Record pytest's selection (after -k/-m/--deselect)."""
        self.selected = list(dict.fromkeys(selected))
        self.deselected = [c for c in dict.fromkeys(deselected) if c not in self.selected]
        self.section["selection"] = {"keyword": keyword or None, "markexpr": markexpr or None,
                                     "selected": self.selected, "deselected": self.deselected}

    def skip(self, case_id: str, reason: str) -> None:
        self.skipped[case_id] = reason

    def finish(self, entries: Sequence[Mapping[str, Any]], interrupted: str | None) -> None:
        """The final status into the section (see results/status.finish)."""
        self.section.update(status.finish(entries, self.selected, self.skipped, interrupted=interrupted))

    def check_baseline(self, baseline: Mapping[str, Any], entries: Sequence[Mapping[str, Any]]) -> list[Gap]:
        """The baseline's cases this run lacks; kept in `gaps` and in the section."""
        left_out = {c: self._how_left_out() for c in self.deselected}
        self.gaps = gaps(baseline, entries, left_out=left_out, skipped=self.skipped)
        self.section["baseline_gaps"] = [{"case": g.case, "kind": g.kind, "detail": g.detail} for g in self.gaps]
        return self.gaps

    def _how_left_out(self) -> str:
        selection = self.section.get("selection") or {}
        how = [f"{flag} {selection[key]!r}" for flag, key in (("-k", "keyword"), ("-m", "markexpr")) if selection.get(key)]
        return ", ".join(how) or "deselected"

    def lines(self, allow_missing: bool) -> list[str]:
        """The run's status and, when gated, the baseline cases this run lacks (terminal summary)."""
        section = self.section
        lines = [f"speedbench: run {section['status']}" + (f": {section['reason']}" if section.get("reason") else "")]
        if section.get("save_error"):
            lines.append(f"speedbench: the run's final status was not saved: {section['save_error']}")
        failing = [g for g in self.gaps if not g.allowed]
        if failing:
            lines.append(f"speedbench: {'ALLOWED' if allow_missing else 'FAILED'}: {len(failing)} baseline case(s) "
                         f"missing from this run (missing means failed"
                         + ("; --speedbench-allow-missing accepts it)" if not allow_missing else ")"))
            lines += [f"  {g.message()}" for g in failing]
        left = [g for g in self.gaps if g.allowed]
        if left:
            lines.append(f"speedbench: not gated, {len(left)} baseline case(s) left out by the selection:")
            lines += [f"  {g.message()}" for g in left]
        return lines
