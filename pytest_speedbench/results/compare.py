"""Runs side by side: per case, the metrics of every run, their changes and a verdict per run,
and what keeps a comparison from gating everything.

The first run is the baseline; every other run is compared with it through `gates.evaluate`,
the same code the plugin uses, so rules and thresholds behave as in a pytest session
(`speedbench compare` is the command).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_speedbench.metrics import catalogue
from pytest_speedbench.results import coverage, gates, status
from pytest_speedbench.results.status import Pick
from pytest_speedbench.results.merge import missing_shards
from pytest_speedbench.results.export import Run, case_id
from pytest_speedbench.settings.options import SECTION_KEYS, load_yaml

FORMATS = ("table", "markdown", "csv")


@dataclass
class CaseComparison:
    """One case across runs: values per metric (None where absent) and a verdict per candidate."""

    case: str
    params: Mapping[str, Any]
    present: list[bool]  # per run, baseline first
    values: dict[str, list[float | None]] = field(default_factory=dict)
    verdicts: list[gates.Verdict | None] = field(default_factory=list)  # per candidate run
    #: per run: its speedups are not trusted (extra_info.stability unstable)
    unstable: list[bool] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(v is not None and v.verdict == "fail" for v in self.verdicts)

    def outcome(self, metric: str, candidate: int) -> str:
        """Worst outcome of the checks on `metric` for candidate run `candidate` ('' when none)."""
        verdict = self.verdicts[candidate]
        if verdict is None:
            return ""
        order = {"fail": 4, "unstable": 3, "noise": 2, "pass": 1, "skip": 0}
        outcomes = [c.outcome for c in verdict.checks if c.metric == metric]
        return max(outcomes, key=order.__getitem__) if outcomes else ""


def _key(params: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(gates.norm(params.get(k)) for k in gates.PARAM_KEYS)


def compare_runs(
    runs: Sequence[Run],
    *,
    rules: Sequence[gates.Rule] = (),
    thresholds: Sequence[gates.Threshold] = (),
    strict: bool = False,
    metrics: Sequence[str] | None = None,
    allow_missing: bool = False,
    allow_change: Sequence[str] = (),
) -> list[CaseComparison]:
    """Pure comparison of loaded runs: cases in first-seen order across runs.

    `metrics` defaults to the catalogue's `compare` paths.
    """
    metrics = catalogue.paths(catalogue.COMPARE) if metrics is None else metrics
    index: dict[tuple[Any, ...], CaseComparison] = {}
    entries: dict[tuple[Any, ...], list[Mapping[str, Any] | None]] = {}
    for i, run in enumerate(runs):
        for bench in run.doc.get("benchmarks", []):
            params = bench.get("params") or {}
            key = _key(params) if params else (case_id(bench),)
            if key not in index:
                index[key] = CaseComparison(case_id(bench), params, [False] * len(runs))
                entries[key] = [None] * len(runs)
            index[key].present[i] = True
            entries[key][i] = bench.get("extra_info") or {}
    for key, comp in index.items():
        infos = entries[key]
        comp.unstable = [gates.unstable_reason(info, None) is not None if info is not None else False
                         for info in infos]
        wanted = list(metrics)
        for rule in rules:
            for info in infos:
                if info is not None and infos[0] is not None:
                    wanted += [m for m in rule.expand(infos[0], info) if m not in wanted]
        for threshold in thresholds:
            wanted += [b.metric for b in threshold.bounds if threshold.categories is None and b.metric not in wanted]
        comp.values = {m: [gates.lookup(info, m) if info is not None else None for info in infos] for m in wanted}
        gated = bool(rules or thresholds)
        for info in infos[1:]:
            if info is None or not gated:
                comp.verdicts.append(None)
                continue
            comp.verdicts.append(gates.evaluate(comp.params, info, thresholds=thresholds, rules=rules,
                                                baseline_extra_info=infos[0], strict=strict,
                                                allow_missing=allow_missing, allow_change=allow_change))
        if thresholds and len(runs) == 1 and infos[0] is not None:
            comp.verdicts.append(gates.evaluate(comp.params, infos[0], thresholds=thresholds))
        # every checked metric gets a row, e.g. per-category AL from a category threshold
        for verdict in comp.verdicts:
            for check in verdict.checks if verdict else ():
                if check.metric != "*" and check.metric not in comp.values:
                    comp.values[check.metric] = [
                        gates.lookup(info, check.metric) if info is not None else None for info in infos
                    ]
    return list(index.values())


def _change(base: float | None, value: float | None) -> str:
    if base is None or value is None:
        return ""
    if base == 0:
        return f"{value - base:+.3g}"
    return f"{(value - base) / abs(base) * 100:+.1f}%"


def _case_status(comp: CaseComparison, labels: Sequence[str]) -> str:
    if not comp.present[0]:
        return "missing from baseline (not gated)"
    missing = [labels[i] for i, p in enumerate(comp.present) if not p]
    verdicts = [v.verdict.upper() for v in comp.verdicts if v is not None]
    status = ", ".join(verdicts) if verdicts else ""
    if missing:
        status = (status + "; " if status else "") + "missing from " + ", ".join(missing)
    unstable = [labels[i] for i, u in enumerate(comp.unstable) if u]
    if unstable:  # its speedups are not trusted there: never read as a regression or a gain
        status = (status + "; " if status else "") + "UNSTABLE in " + ", ".join(unstable)
    return status


def _rows(comp: CaseComparison, labels: Sequence[str], gated: bool) -> tuple[list[str], list[list[str]]]:
    single = len(labels) == 1 and gated  # thresholds on one run: its own verdict column
    headers = ["metric", labels[0]] + (["verdict"] if single else [])
    for label in labels[1:]:
        headers += [label, "change"] + (["verdict"] if gated else [])
    body = []
    for metric, values in comp.values.items():
        if all(v is None for v in values):
            continue
        row = [metric, gates.fmt(values[0]) if values[0] is not None else "-"]
        if single:
            row.append(comp.outcome(metric, 0) if comp.verdicts else "")
        for i, value in enumerate(values[1:]):
            row += [gates.fmt(value) if value is not None else "-", _change(values[0], value)]
            if gated:
                row.append(comp.outcome(metric, i) if i < len(comp.verdicts) else "")
        body.append(row)
    return headers, body


def _text_table(headers: list[str], body: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(str(r[i])) for r in [headers, *body]) for i in range(len(headers))]
    fmt_row = lambda r: indent + "  ".join(  # noqa: E731
        (str(c).ljust(w) if i == 0 else str(c).rjust(w)) for i, (c, w) in enumerate(zip(r, widths))
    ).rstrip()
    return [fmt_row(headers), indent + "  ".join("-" * w for w in widths), *(fmt_row(r) for r in body)]


def _reasons(comp: CaseComparison, labels: Sequence[str]) -> list[str]:
    out = []
    for label, verdict in zip(labels[1:] if len(labels) > 1 else labels, comp.verdicts):
        if verdict is not None:
            out += [f"{label}: {reason}" for reason in verdict.reasons]
    return out


def render(comparisons: Sequence[CaseComparison], labels: Sequence[str], fmt: str, *,
           gated: bool, rules_text: str = "", preamble: Sequence[str] = (), problems: Sequence[str] = ()) -> str:
    """The report in `fmt` (table | markdown | csv); `preamble` (each run's status) opens a table or
    markdown report, `problems` (why the gate is incomplete) closes it, before the summary line.
    csv carries neither: it is data."""
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["case", "metric", "run", "value", "baseline", "change_pct", "outcome"])
        for comp in comparisons:
            for metric, values in comp.values.items():
                for i, value in enumerate(values):
                    if value is None and not comp.present[i]:
                        continue
                    base = values[0]
                    pct = "" if i == 0 or value is None or not base else f"{(value - base) / abs(base) * 100:.4g}"
                    outcome = comp.outcome(metric, i - 1) if i > 0 and i - 1 < len(comp.verdicts) else ""
                    writer.writerow([comp.case, metric, labels[i], "" if value is None else repr(value),
                                     "" if base is None else repr(base), pct, outcome])
        return buf.getvalue()
    lines: list[str] = []
    if fmt == "markdown":
        lines += [f"# speedbench compare: {' vs '.join(labels)}", ""]
        if rules_text:
            lines += [f"Rules: `{rules_text}`", ""]
        lines += [f"- {p}" for p in preamble] + ([""] if preamble else [])
    else:
        lines += list(preamble) + ([""] if preamble else [])
    for comp in comparisons:
        headers, body = _rows(comp, labels, gated)
        status = _case_status(comp, labels)
        if fmt == "markdown":
            lines += [f"## {comp.case}" + (f" — {status}" if status else ""), ""]
            lines.append("| " + " | ".join(headers) + " |")
            lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|")
            lines += ["| " + " | ".join(c if c else " " for c in row) + " |" for row in body]
            reasons = _reasons(comp, labels)
            if reasons:
                lines += [""] + [f"- {r}" for r in reasons]
            lines.append("")
        else:
            lines.append(f"{comp.case}" + (f"  [{status}]" if status else ""))
            lines += _text_table(headers, body)
            lines += [f"  ! {r}" for r in _reasons(comp, labels)]
            lines.append("")
    if problems:
        lines += [f"- {p}" for p in problems] if fmt == "markdown" else list(problems)
        lines.append("")
    lines.append(summary_line(comparisons) + (f"; gate incomplete: {sum(p.startswith('INCOMPLETE') for p in problems)} "
                                              "problem(s)" if any(p.startswith("INCOMPLETE") for p in problems) else ""))
    return "\n".join(lines) + "\n"


def summary_line(comparisons: Sequence[CaseComparison]) -> str:
    counts = {"fail": 0, "unstable": 0, "pass": 0, "skip": 0}
    for comp in comparisons:
        for v in comp.verdicts:
            if v is not None:
                counts[v.verdict] += 1
    total = sum(counts.values())
    if total:
        text = (f"{len(comparisons)} cases, {total} verdicts: {counts['fail']} failed, {counts['pass']} passed, "
                f"{counts['skip']} not gated")
        if counts["unstable"]:
            text += f", {counts['unstable']} unstable (speedups not judged)"
    else:
        text = f"{len(comparisons)} cases compared; no --fail rules or thresholds, nothing gated"
    no_base = sum(1 for c in comparisons if not c.present[0])
    gaps = sum(1 for c in comparisons if c.present[0] and not all(c.present))
    text += f"; {no_base} missing from the baseline" if no_base else ""
    return text + (f"; {gaps} missing from a compared run" if gaps else "")


def thresholds_from_yaml(config: str | None) -> tuple[list[gates.Threshold], list[gates.Rule]]:
    """The thresholds and fail rules of a speedbench.yaml (none without one)."""
    if not config:
        return [], []
    data = load_yaml(Path(config))
    sections = {k: data[k] for k in SECTION_KEYS if k in data}
    return gates.parse_thresholds(sections), gates.rules_from_settings(None, sections)


#: exit codes of `speedbench compare` (docs/gates.md)
EXIT_PASS, EXIT_REGRESSION, EXIT_USAGE, EXIT_INCOMPLETE = 0, 1, 2, 3


@dataclass
class GateProblems:
    """Why a comparison could not gate everything: each a line; `allowed` ones are only notes."""

    failing: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)

    def add(self, text: str, allowed: bool) -> None:
        (self.allowed if allowed else self.failing).append(text)

    def lines(self) -> list[str]:
        out = [f"INCOMPLETE: {t}" for t in self.failing]
        return out + [f"note: {t}" for t in self.allowed]


def run_problems(runs: Sequence[Run], picks: Mapping[int, Pick], *, allow_missing: bool) -> GateProblems:
    """What makes the compared runs unfit to gate: a run compared with itself, a compared run that is
    not complete, `latest` having passed over newer broken runs, baseline cases a run lacks."""
    problems = GateProblems()
    base = runs[0]
    for i, r in enumerate(runs[1:], start=1):
        if r.path.resolve() == base.path.resolve():
            problems.add(f"{r.label} is the baseline itself: nothing to gate"
                         + (f" ({'; '.join(f'{p.name}: {w}' for p, w in picks[i].skipped)} passed over by 'latest')"
                            if i in picks and picks[i].skipped else ""), False)
            continue
        if i in picks and picks[i].skipped:
            skipped = "; ".join(f"{p.name}: {why}" for p, why in picks[i].skipped)
            problems.add(f"'latest' picked {r.label}, passing over newer runs that are not complete: {skipped}",
                         allow_missing)
        state, reason = status.status_of(r.doc)
        if state not in (status.COMPLETE, status.UNKNOWN):
            problems.add(f"{r.label} is {state}" + (f": {reason}" if reason else ""), allow_missing)
        for line in missing_shards(r.doc):  # a merged run written with `speedbench merge --allow-missing`
            problems.add(f"{r.label}: {line}", allow_missing)
        for gap in coverage.gaps(base.doc, r.doc.get("benchmarks") or [], left_out=coverage.left_out_of(r.doc)):
            problems.add(f"{r.label}: {gap.message()}", allow_missing or gap.allowed)
    return problems


def status_lines(runs: Sequence[Run]) -> list[str]:
    """One line per run: its label and status (with the reason when not complete)."""
    return [f"{'baseline' if i == 0 else 'run'} {r.label}: {status.describe(r.doc)}" for i, r in enumerate(runs)]


def per_category_text(runs: Sequence[Run], fmt: str) -> str:
    """AL per category of each run: aligned tables, or markdown tables (csv: nothing more)."""
    from pytest_speedbench.results.table import category_rows, category_table

    out: list[str] = []
    for r in runs:
        entries = list(r.doc.get("benchmarks") or [])
        if fmt == "markdown":
            rows = category_rows(entries)
            if rows:
                out += ["", f"## AL per category: {r.label}", "", "| " + " | ".join(rows[0]) + " |",
                        "|" + "|".join(["---"] + ["---:"] * (len(rows[0]) - 1)) + "|"]
                out += ["| " + " | ".join(row) + " |" for row in rows[1:]]
        elif fmt == "table":
            table = category_table(entries)
            out += ["", f"{r.label}: {table[0]}", *table[1:]] if table else []
    return "\n".join(out) + ("\n" if out else "")


def exit_code(comparisons: Sequence[CaseComparison], problems: GateProblems) -> int:
    """1 when a measured case regressed (a rule or threshold broken); else 3 when the gate is
    incomplete (a baseline case absent, errored or unmeasured, settings changed, a run not
    complete, a run compared with itself); else 0."""
    failed = [c for comp in comparisons for v in comp.verdicts if v is not None for c in v.checks if c.failed]
    if any(c.kind in ("rule", "threshold") for c in failed):
        return EXIT_REGRESSION
    return EXIT_INCOMPLETE if failed or problems.failing else EXIT_PASS
