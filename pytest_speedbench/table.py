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
        gate.get("verdict", "-"),
    )


def render(entries: Sequence[dict[str, Any]]) -> list[str]:
    """Lines of the summary table (header, rule, one row per entry, then gate reasons)."""
    rows = [COLUMNS] + [row_for(e) for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for entry in entries:
        gate = entry.get("extra_info", {}).get("gate") or {}
        for reason in gate.get("reasons", []):
            lines.append(f"  {entry.get('param') or entry.get('name')}: {gate.get('verdict')}: {reason}")
    return lines
