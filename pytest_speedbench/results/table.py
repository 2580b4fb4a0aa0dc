"""The terminal summary: one row per case, as plain fixed-width text."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

COLUMNS = ("case", "AL (95% CI)", "AL src", "speedup user/out/anl", "TTFT p50/p99 ms", "out TPS", "verdict")


def _num(value: Any, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def _al(extra: dict[str, Any]) -> str:
    al = extra.get("acceptance_length")
    ci = extra.get("acceptance_length_ci95") or [None, None]
    if al is None:
        return "-"
    if ci[0] is None:
        return f"{al:.2f}"
    return f"{al:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def _speedups(extra: dict[str, Any]) -> str:
    keys = ("speedup_user_tps", "speedup_output_tps", "speedup_analytical")
    if all(extra.get(k) is None for k in keys):
        return "-"
    return "/".join(_num(extra.get(k)) for k in keys)


def _ttft(extra: dict[str, Any]) -> str:
    ttft = extra.get("ttft_s") or {}
    if ttft.get("p50") is None:
        return "-"
    return f"{ttft['p50'] * 1e3:.1f}/{ttft['p99'] * 1e3:.1f}"


def row_for(entry: dict[str, Any]) -> tuple[str, ...]:
    extra = entry.get("extra_info", {})
    gate = extra.get("gate") or {}
    return (
        entry.get("param") or entry.get("name", "?"),
        _al(extra),
        {"engine_counters": "counters", "chunks": "chunks"}.get(extra.get("al_source"), extra.get("al_source") or "-"),
        _speedups(extra),
        _ttft(extra),
        _num(extra.get("output_tps"), "{:.1f}"),
        _verdict(extra, gate),
    )


def _verdict(extra: dict[str, Any], gate: dict[str, Any]) -> str:
    """The gate's verdict, with `unstable` added when the case's speedups could not be trusted."""
    verdict = gate.get("verdict", "-")
    stability = extra.get("stability") or {}
    if stability.get("verdict") == "unstable" and verdict != "unstable":
        return f"{verdict} (unstable)"
    return verdict


#: how each check outcome is labelled in the gate lines, worst first
_OUTCOME_LABELS = {"fail": "FAIL", "unstable": "UNSTABLE", "noise": "noise", "skip": "skip"}


def _label(check: dict[str, Any]) -> str:
    """A passed check in a few words: the rule text names its metric; a threshold's does not."""
    rule = str(check.get("rule"))
    return rule if check.get("kind") == "rule" else f"{check.get('metric')} {rule}"


def gate_lines(entry: dict[str, Any]) -> list[str]:
    """Every gate result of one case, concisely: a head line with counts, then a line per check
    that did not simply pass (failures first), then any reason no check explains (failed
    requests, errors). Passed checks are counted and named by their rule, not spelled out.

    Entries without `checks` (errors recorded before measuring, older results) fall back to
    their reasons. A case with no gate configured at all gives no lines.
    """
    name = entry.get("param") or entry.get("name", "?")
    gate = entry.get("extra_info", {}).get("gate") or {}
    checks = [c for c in gate.get("checks") or [] if isinstance(c, dict)]
    reasons = [str(r) for r in gate.get("reasons") or []]
    if not checks and not reasons:
        return []
    counts = {o: sum(1 for c in checks if c.get("outcome") == o) for o in ("fail", "unstable", "pass", "noise", "skip")}
    words = {"fail": "failed", "unstable": "unstable", "pass": "passed", "noise": "within noise",
             "skip": "not checked"}
    parts = [f"{n} {words[o]}" for o, n in counts.items() if n]
    passed = [_label(c) for c in checks if c.get("outcome") == "pass"]
    head = f"  {name}: {gate.get('verdict', '-')}"
    if parts:
        head += " (" + ", ".join(parts) + ")"
    if passed:
        head += "; passed: " + ", ".join(dict.fromkeys(passed))
    lines = [head]
    for outcome, label in _OUTCOME_LABELS.items():
        lines += [f"    {label}: {c.get('message')}" for c in checks if c.get("outcome") == outcome]
    explained = {str(c.get("message")) for c in checks}
    lines += [f"    {'FAIL' if gate.get('verdict') == 'fail' else 'note'}: {r}" for r in reasons if r not in explained]
    return lines


def render(entries: Sequence[dict[str, Any]]) -> list[str]:
    """Lines of the summary table: header, rule, one row per entry, then every gate result."""
    rows = [COLUMNS] + [row_for(e) for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    gates = [line for entry in entries for line in gate_lines(entry)]
    if gates:
        lines += ["gates:", *gates]
    unstable = [(e.get("param") or e.get("name", "?"), (e.get("extra_info", {}).get("stability") or {}))
                for e in entries]
    unstable = [(name, st) for name, st in unstable if st.get("verdict") == "unstable"]
    if unstable:
        lines.append("unstable (speedups not trusted, not judged as regressions):")
        lines += [f"  {name}: {reason}" for name, st in unstable for reason in st.get("reasons") or []]
    return lines
