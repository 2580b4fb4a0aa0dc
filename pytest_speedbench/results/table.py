"""The terminal summary: one row per case, as plain fixed-width text."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_speedbench.metrics import catalogue


def columns() -> list[tuple[str, list[tuple[catalogue.MetricSpec, str]]]]:
    """The catalogue's table columns in order: (header, [(spec, path), ...]); rows sharing a
    `column` header, and the statistics of one row, share a cell."""
    out: dict[str, list[tuple[catalogue.MetricSpec, str]]] = {}
    for spec in catalogue.metrics():
        for path in spec.paths(catalogue.TABLE):
            out.setdefault(spec.column or spec.label, []).append((spec, path))
    return list(out.items())


def header() -> tuple[str, ...]:
    return ("case", *(h for h, _ in columns()), "verdict")


def _value(extra: dict[str, Any], spec: catalogue.MetricSpec, path: str) -> Any:
    head, _, stat = path.partition(".")
    value = extra.get(head)
    return value.get(stat) if stat and isinstance(value, dict) else value


def _text(spec: catalogue.MetricSpec, value: Any) -> str:
    if value is None:
        return "-"
    if spec.kind == "text":
        return spec.abbreviations.get(value, str(value))
    return f"{value * spec.scale:.{spec.digits}f}"


def _cell(extra: dict[str, Any], members: list[tuple[catalogue.MetricSpec, str]]) -> str:
    """'-' when nothing was measured; values joined by '/'; a lone value with its 95% CI."""
    values = [_value(extra, spec, path) for spec, path in members]
    if all(v is None for v in values):
        return "-"
    text = "/".join(_text(spec, v) for (spec, _), v in zip(members, values))
    spec, path = members[0]
    if len(members) == 1 and spec.has_ci and "." not in path:
        ci = extra.get(f"{path}_ci95") or [None, None]
        if ci[0] is not None:
            scale, d = spec.scale, spec.digits
            text += f" [{ci[0] * scale:.{d}f}, {ci[1] * scale:.{d}f}]"
    return text


def row_for(entry: dict[str, Any]) -> tuple[str, ...]:
    extra = entry.get("extra_info", {})
    gate = extra.get("gate") or {}
    cells = tuple(_cell(extra, members) for _, members in columns())
    return (entry.get("param") or entry.get("name", "?"), *cells, _verdict(extra, gate))


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


#: what the table's short words mean, printed under it
LEGEND: tuple[str, ...] = (
    "legend: AL = acceptance length, tokens per decode step [95% CI]; AL src: chunks = one streamed event per "
    "decode step, counters = the engine's SD counters, mixed = both (extra_info.al_source_reason says why)",
    "        engine AL/draft = 1 + accepted / drafted steps, the acceptance length vLLM's and SGLang's own tools "
    "print; step ms pooled/req-mean = decode time / decode steps over all requests (the server's own figure), "
    "then the mean of each request's",
    "        speedup user/out/anl = measured user-TPS and output-TPS speedup over the drafter=none twin, and the "
    "analytical speedup (AR step latency x AL / SD step latency)",
    "        verdict: pass = every check passed; fail = a check failed, the case errored or a baseline metric is "
    "missing; skip = nothing to check; unstable = only speedup rules broke on an unstable case (not judged); "
    "(unstable) = the case's speedups are not trusted",
)


def aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as left-aligned columns, a rule under the first (the header)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def category_rows(entries: Sequence[Mapping[str, Any]]) -> list[tuple[str, ...]]:
    """AL per category: a header (case, then each category seen) and a row per entry that has
    per-category values; [] when none has."""
    found = [(e.get("param") or e.get("name", "?"), (e.get("extra_info") or {}).get("acceptance_length_by_category"))
             for e in entries]
    found = [(name, cats) for name, cats in found if isinstance(cats, Mapping) and cats]
    categories = sorted({c for _, cats in found for c in cats})
    if not found:
        return []
    rows = [("case", *categories)]
    for name, cats in found:
        rows.append((str(name), *(f"{cats[c]:.2f}" if isinstance(cats.get(c), (int, float)) else "-"
                                  for c in categories)))
    return rows


def category_table(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """'AL per category:' and the aligned table (terminal with -v, `speedbench compare --per-category`)."""
    rows = category_rows(entries)
    return ["AL per category:", *aligned(rows)] if rows else []


def render(entries: Sequence[dict[str, Any]], *, per_category: bool = False) -> list[str]:
    """Lines of the summary table: header, rule, one row per entry, the legend, the AL per
    category (when asked: -v), then every gate result."""
    lines = aligned([header()] + [row_for(e) for e in entries])
    lines += LEGEND
    if per_category:
        lines += category_table(entries)
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


def summary_lines(entries: Sequence[dict[str, Any]], per_category: bool = False) -> list[str]:
    """The terminal summary: the table (`render`), then each case's warnings and repeat check."""
    lines = render(entries, per_category=per_category)
    for entry in entries:
        extra = entry.get("extra_info", {})
        for warning in extra.get("warnings") or []:
            lines.append(f"WARNING {entry.get('param') or entry.get('name')}: {warning}")
        repeat = extra.get("repeat_check") or {}
        if repeat.get("verdict") in ("pass", "fail"):
            lines.append(f"repeat check {entry.get('param') or entry.get('name')}: {repeat['verdict']}: "
                         f"{repeat['reason']}")
    return lines
