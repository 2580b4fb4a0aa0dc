"""Regression gates: absolute thresholds and baseline comparison -> a verdict with reasons.

Pure functions over `extra_info` dicts (docs/metrics.md, "Results JSON"), so the plugin, the
`speedbench compare` command and the tests share one implementation and no I/O happens here.

Two kinds of check:

- thresholds (speedbench.yaml `thresholds:`): absolute bounds, `{min: x}` / `{max: y}`, for the
  cases whose params (and, for per-category metrics, category) match a subset of the axes;
- rules (`--speedbench-fail=acceptance_length:-3%,ttft_s.p99:+10%`): the allowed change against
  a baseline run. The sign names the direction that fails. A change fails only when it exceeds
  the tolerance *and* the baseline value lies outside the current run's 95% confidence
  interval (noise-aware); `strict=True` drops the second condition. See docs/gates.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pytest_speedbench.errors import UsageError
from pytest_speedbench.metrics import catalogue
from pytest_speedbench.results import fingerprint

#: where a measured case keeps its settings fingerprint (results/fingerprint.py)
FINGERPRINT_KEY = "settings_fingerprint"

PARAM_KEYS: tuple[str, ...] = ("engine", "drafter", "split", "bucket", "batch_size", "temperature", "draft_length",
                              "request_rate")
MATCH_KEYS: tuple[str, ...] = (*PARAM_KEYS, "category")

#: float slack so a change of exactly the tolerance (e.g. 2.0 -> 1.94 for -3%) does not fail
_EPS = 1e-9
_SPEC_RE = re.compile(r"^(?P<sign>[+-])?(?P<num>\d+(?:\.\d*)?|\.\d+)(?P<pct>%)?$")


def metric_names() -> list[str]:
    """Every metric path a rule or threshold may name (per-category paths as a pattern), from the catalogue."""
    return catalogue.gated_paths()


def check_metric(name: str, where: str) -> str:
    """`name` when a rule, threshold or `--metrics` may name it; else a UsageError listing the valid ones."""
    return catalogue.check_path(name, where)


def bad_direction(metric: str) -> int:
    """-1 when a decrease is the regression direction, +1 when an increase is."""
    spec = catalogue.spec_for(metric)
    return spec.bad_direction(metric) if spec is not None else +1


def _category_metrics() -> list[str]:
    """Metrics a threshold with `category` in its match may bound: `<metric>_by_category[cat]`."""
    return [m.name for m in catalogue.metrics() if m.gated and m.per_category]


# --------------------------------------------------------------------------- value lookup


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def lookup(extra_info: Mapping[str, Any], path: str) -> float | None:
    """The finite number at `path` ('acceptance_length', 'ttft_s.p99', 'acceptance_length_by_category.math')."""
    head, _, tail = path.partition(".")
    value = extra_info.get(head)
    if tail:
        value = value.get(tail) if isinstance(value, Mapping) else None
    return _number(value)


@dataclass(frozen=True)
class Interval:
    lo: float
    hi: float
    #: how it was obtained: "95% CI" (bootstrap, from the results) or "95% CI (normal approx.)"
    label: str = "95% CI"

    def __contains__(self, value: float) -> bool:
        return self.lo <= value <= self.hi

    def __str__(self) -> str:
        return f"{self.label} [{fmt(self.lo)}, {fmt(self.hi)}]"


def _pair(value: Any) -> Interval | None:
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        lo, hi = _number(value[0]), _number(value[1])
        if lo is not None and hi is not None:
            return Interval(min(lo, hi), max(lo, hi))
    return None


def current_interval(extra_info: Mapping[str, Any], path: str) -> Interval | None:
    """The current run's 95% interval for `path`, or None when the run carries none.

    Looked up, in order: `<metric>_ci95` (e.g. acceptance_length_ci95, speedup_user_tps_ci95);
    for a path a.b, `a["b_ci95"]` then `a_ci95["b"]` (e.g. acceptance_length_by_category_ci95
    {cat: [lo, hi]}); for `<summary>.mean`, the normal approximation mean +- 1.96 std/sqrt(n)
    with n = num_requests. Percentiles, std and output_tps have no interval unless metrics
    add one: for them the tolerance alone decides.
    """
    if "." not in path:
        return _pair(extra_info.get(f"{path}_ci95"))
    head, _, tail = path.partition(".")
    obj = extra_info.get(head)
    if isinstance(obj, Mapping) and (found := _pair(obj.get(f"{tail}_ci95"))):
        return found
    per_key = extra_info.get(f"{head}_ci95")
    if isinstance(per_key, Mapping) and (found := _pair(per_key.get(tail))):
        return found
    if tail == "mean" and isinstance(obj, Mapping):
        mean, std = _number(obj.get("mean")), _number(obj.get("std"))
        n = _number(extra_info.get("num_requests"))
        if mean is not None and std is not None and n and n >= 2:
            half = 1.96 * std / math.sqrt(n)
            return Interval(mean - half, mean + half, "95% CI (normal approx.)")
    return None


def fmt(value: float | None) -> str:
    """Compact number for messages: 2.41, 0.0123, 1234."""
    if value is None:
        return "n/a"
    a = abs(value)
    if a >= 1000:
        return f"{value:.0f}"
    if a >= 100:
        return f"{value:.1f}"
    if a >= 1 or a == 0:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _pct(baseline: float, current: float) -> float | None:
    return None if baseline == 0 else (current - baseline) / abs(baseline) * 100.0


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    """One `--speedbench-fail` rule: `metric:[+|-]amount[%]`."""

    metric: str
    #: -1: a decrease beyond `amount` fails; +1: an increase beyond `amount` fails
    direction: int
    amount: float
    relative: bool

    @property
    def text(self) -> str:
        sign = "-" if self.direction < 0 else "+"
        return f"{self.metric}:{sign}{self.amount:g}{'%' if self.relative else ''}"

    def exceeded(self, baseline: float, current: float) -> bool | None:
        """True when the change goes beyond the tolerance in the failing direction; None if undefined."""
        if self.relative:
            pct = _pct(baseline, current)
            if pct is None:
                return None
            return pct * self.direction > self.amount + _EPS * max(1.0, self.amount)
        delta = (current - baseline) * self.direction
        return delta > self.amount + _EPS * max(1.0, abs(baseline), abs(current))

    def expand(self, baseline: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
        """Concrete metric paths: `acceptance_length_by_category` means each category in both runs."""
        if not self.metric.endswith("_by_category"):
            return [self.metric]
        base, cur = baseline.get(self.metric), current.get(self.metric)
        if not isinstance(base, Mapping) or not isinstance(cur, Mapping):
            return [self.metric]
        return [f"{self.metric}.{c}" for c in cur if c in base]


#: the rules docs/gates.md recommends for CI (and benchmarks/bench_false_alarms.py checks for false
#: alarms): AL may not drop more than 3%, the user-TPS speedup not more than 5%, both noise-aware
DEFAULT_RULES = "acceptance_length:-3%,speedup_user_tps:-5%"


def parse_fail_rules(text: str | Sequence[str] | None, option: str = "--speedbench-fail") -> list[Rule]:
    """Parse `acceptance_length:-3%,speedup_user_tps:-5%,ttft_s.p99:+10%` (or a yaml list of items).

    A percent amount is relative to the baseline; a bare number is an absolute change in the
    metric's unit. Without a sign the metric's regression direction is used (a drop for AL,
    TPS and speedups; a rise for latencies). `option` names the source in error messages.
    """
    if text is None:
        return []
    items = [p.strip() for p in text.split(",")] if isinstance(text, str) else [str(p).strip() for p in text]
    rules: list[Rule] = []
    for item in items:
        if not item:
            continue
        metric, sep, spec = item.rpartition(":")
        if not sep or not metric:
            raise UsageError(
                f"{option}: rule {item!r} is not METRIC:CHANGE (e.g. acceptance_length:-3%, "
                f"ttft_s.p99:+10%, acceptance_length:-0.1); valid metrics: {', '.join(metric_names())}"
            )
        metric = check_metric(metric, f"{option} rule {item!r}")
        m = _SPEC_RE.match(spec.strip())
        if not m:
            raise UsageError(
                f"{option}: rule {item!r} has change {spec!r}; expected a signed amount such as "
                f"-3% (relative) or -0.1 (absolute), where the sign names the direction that fails"
            )
        direction = {"-": -1, "+": +1, None: bad_direction(metric)}[m.group("sign")]
        rules.append(Rule(metric, direction, float(m.group("num")), m.group("pct") is not None))
    return rules


def rules_from_settings(fail_option: str | None, sections: Mapping[str, Any]) -> list[Rule]:
    """The command line `--speedbench-fail` wins; otherwise speedbench.yaml `fail:` (or `gates: {fail:}`)."""
    if fail_option:
        return parse_fail_rules(fail_option)
    gates = sections.get("gates") if isinstance(sections.get("gates"), Mapping) else {}
    return parse_fail_rules(sections.get("fail", gates.get("fail")))


# --------------------------------------------------------------------------- thresholds


def norm(value: Any) -> Any:
    """Match values across yaml and results: 0 == 0.0, '1' == 1, None == null."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class Bound:
    metric: str
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class Threshold:
    """One `thresholds:` entry: applies to cases whose params match every key of `match`."""

    index: int
    match: tuple[tuple[str, tuple[Any, ...]], ...]
    bounds: tuple[Bound, ...]

    @property
    def categories(self) -> tuple[Any, ...] | None:
        """Category values of the match (('*',) for every category), None when not per category."""
        return dict(self.match).get("category")

    def matches(self, params: Mapping[str, Any]) -> bool:
        for key, accepted in self.match:
            if key == "category":
                continue
            if norm(params.get(key)) not in {norm(v) for v in accepted}:
                return False
        return True

    def describe(self) -> str:
        parts = []
        for key, values in self.match:
            shown = values[0] if len(values) == 1 else "|".join(str(v) for v in values)
            parts.append(f"{key}={shown}")
        return f"thresholds[{self.index}]" + (f" ({', '.join(parts)})" if parts else " (all cases)")


def parse_thresholds(sections: Mapping[str, Any]) -> list[Threshold]:
    """Read speedbench.yaml's `thresholds:` list (or `gates: {thresholds: [...]}`).

    Each entry: `match: {axis: value | [values], category: name | [names] | '*'}` plus
    `metric: {min: x, max: y}` items. Errors name the entry and the valid keys.
    """
    raw = sections.get("thresholds")
    gates = sections.get("gates")
    if raw is None and isinstance(gates, Mapping):
        raw = gates.get("thresholds")
    if raw is None:
        return []
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        raise UsageError("speedbench.yaml: 'thresholds' must be a list of {match: {...}, <metric>: {min|max: value}}")
    out: list[Threshold] = []
    for index, entry in enumerate(raw):
        where = f"speedbench.yaml thresholds[{index}]"
        if not isinstance(entry, Mapping):
            raise UsageError(f"{where}: expected a mapping, got {entry!r}")
        match_raw = entry.get("match") or {}
        if not isinstance(match_raw, Mapping):
            raise UsageError(f"{where}: 'match' must map axes to values, got {match_raw!r}")
        match: list[tuple[str, tuple[Any, ...]]] = []
        for key, value in match_raw.items():
            if key not in MATCH_KEYS:
                raise UsageError(f"{where}: unknown match key {key!r}; valid keys: {', '.join(MATCH_KEYS)}")
            values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
            if not values:
                raise UsageError(f"{where}: match key {key!r} has an empty list")
            match.append((str(key), values))
        per_category = "category" in dict(match)
        bounds: list[Bound] = []
        for metric, spec in entry.items():
            if metric == "match":
                continue
            metric = check_metric(str(metric), where)
            if per_category and metric not in _category_metrics():
                raise UsageError(
                    f"{where}: metric {metric!r} has no per-category value; with 'category' in match "
                    f"valid metrics are: {', '.join(_category_metrics())}"
                )
            if not isinstance(spec, Mapping) or not spec or set(spec) - {"min", "max"}:
                raise UsageError(f"{where}: {metric} must be {{min: x}}, {{max: y}} or both, got {spec!r}")
            limits: dict[str, float] = {}
            for k, v in spec.items():
                num = _number(v)
                if num is None:
                    raise UsageError(f"{where}: {metric}.{k} must be a number, got {v!r}")
                limits[k] = num
            bounds.append(Bound(metric, limits.get("min"), limits.get("max")))
        if not bounds:
            raise UsageError(f"{where}: no metric bounds; add e.g. acceptance_length: {{min: 2.0}}")
        out.append(Threshold(index, tuple(match), tuple(bounds)))
    return out


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Check:
    """One gate result, kept for the summary table and JUnit."""

    kind: str  # "threshold" | "rule" | "missing" (baseline measured it, this run did not) | "settings"
    metric: str  # concrete metric path
    rule: str  # "acceptance_length:-3%" or "min 2.5 thresholds[0] (...)"
    outcome: str  # "pass" | "fail" | "noise" (beyond tolerance, inside CI) | "unstable" | "skip"
    message: str
    current: float | None = None
    baseline: float | None = None  # rules: baseline value; thresholds: the limit
    change_pct: float | None = None
    interval: Interval | None = None

    @property
    def failed(self) -> bool:
        return self.outcome == "fail"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready record, so a summary table can list every gate result, passes included."""
        return {
            "kind": self.kind, "metric": self.metric, "rule": self.rule, "outcome": self.outcome,
            "current": self.current, "baseline": self.baseline, "change_pct": self.change_pct,
            "interval": [self.interval.lo, self.interval.hi] if self.interval else None,
            "message": self.message,
        }


@dataclass(frozen=True)
class Verdict:
    verdict: str  # "pass" | "fail" | "unstable" (only unstable speedups broke a rule) | "skip"
    reasons: list[str]
    checks: list[Check] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The `gate` entry of extra_info: verdict, reasons, and every check (`Check.as_dict`)."""
        return {"verdict": self.verdict, "reasons": list(self.reasons), "checks": [c.as_dict() for c in self.checks]}

    def failing(self, measured: Sequence[str] = ()) -> tuple[list[str], dict[str, Any]]:
        """(every reason the case fails, its `gate` entry): `measured` failures (failed requests,
        a failed repeat check) fail the case whatever its checks say, listed first."""
        failures = list(measured) + [c.message for c in self.checks if c.failed]
        gate = self.as_dict()
        if failures and gate["verdict"] != "fail":
            gate = {**gate, "verdict": "fail", "reasons": failures + gate["reasons"]}
        return failures, gate


def _threshold_checks(threshold: Threshold, params: Mapping[str, Any], extra_info: Mapping[str, Any]) -> list[Check]:
    if not threshold.matches(params):
        return []
    paths: list[tuple[Bound, str]] = []
    cats = threshold.categories
    for bound in threshold.bounds:
        if cats is None:
            paths.append((bound, bound.metric))
            continue
        by_cat = extra_info.get(f"{bound.metric}_by_category")
        present = list(by_cat) if isinstance(by_cat, Mapping) else []
        wanted = {norm(c) for c in cats}
        for cat in present:
            if "*" in cats or norm(cat) in wanted:
                paths.append((bound, f"{bound.metric}_by_category.{cat}"))
    checks = []
    for bound, path in paths:
        value = lookup(extra_info, path)
        interval = current_interval(extra_info, path)
        for side, limit in (("min", bound.min), ("max", bound.max)):
            if limit is None:
                continue
            rule = f"{side} {fmt(limit)} of {threshold.describe()}"
            if value is None:
                checks.append(Check("threshold", path, rule, "skip",
                                    f"{path}: not measured in this run; {rule} not checked"))
                continue
            broken = value < limit if side == "min" else value > limit
            word = ("below minimum" if side == "min" else "above maximum") if broken else (
                "meets minimum" if side == "min" else "within maximum")
            ci = f" ({interval})" if interval else ""
            msg = f"{path}: {fmt(value)}{ci} {word} {fmt(limit)} of {threshold.describe()}"
            checks.append(Check("threshold", path, rule, "fail" if broken else "pass", msg,
                                current=value, baseline=limit, interval=interval))
    return checks


def _rule_check(rule: Rule, path: str, extra_info: Mapping[str, Any], baseline: Mapping[str, Any],
                strict: bool, allow_missing: bool = False) -> Check:
    cur, base = lookup(extra_info, path), lookup(baseline, path)
    if cur is None and base is not None and not allow_missing:  # missing means failed
        return Check("missing", path, rule.text, "fail",
                     f"{path}: measured in the baseline ({fmt(base)}) but not in this run; rule {rule.text} "
                     f"cannot pass (--allow-missing accepts it)", cur, base)
    if cur is None or base is None:
        missing = "this run" if cur is None else "the baseline"
        return Check("rule", path, rule.text, "skip",
                     f"{path}: not measured in {missing}; rule {rule.text} not checked", cur, base)
    pct = _pct(base, cur)
    change = f"{pct:+.1f}%" if pct is not None else "n/a %"
    if not rule.relative:
        change = f"{cur - base:+.3g}" + (f", {pct:+.1f}%" if pct is not None else "")
    head = f"{path}: {fmt(base)} -> {fmt(cur)} ({change})"
    interval = current_interval(extra_info, path)
    exceeded = rule.exceeded(base, cur)
    if exceeded is None:
        return Check("rule", path, rule.text, "skip",
                     f"{head}: baseline is 0, relative rule {rule.text} undefined", cur, base, pct, interval)
    if not exceeded:
        return Check("rule", path, rule.text, "pass", f"{head} within rule {rule.text}", cur, base, pct, interval)
    if strict:
        note = "; strict: confidence interval not consulted" + (f" ({interval})" if interval else "")
        return Check("rule", path, rule.text, "fail", f"{head} breaks rule {rule.text}{note}",
                     cur, base, pct, interval)
    if interval is None:
        return Check("rule", path, rule.text, "fail",
                     f"{head} breaks rule {rule.text}; no confidence interval for {path} in this run, "
                     f"tolerance alone decides", cur, base, pct, interval)
    if base in interval:
        return Check("rule", path, rule.text, "noise",
                     f"{head} exceeds rule {rule.text} but baseline {fmt(base)} lies inside current "
                     f"{interval}: within noise", cur, base, pct, interval)
    return Check("rule", path, rule.text, "fail",
                 f"{head} breaks rule {rule.text}; baseline {fmt(base)} outside current {interval}",
                 cur, base, pct, interval)


def evaluate(
    params: Mapping[str, Any],
    extra_info: Mapping[str, Any],
    *,
    thresholds: Iterable[Threshold] = (),
    rules: Iterable[Rule] = (),
    baseline_extra_info: Mapping[str, Any] | None = None,
    strict: bool = False,
    allow_missing: bool = False,
    allow_change: Collection[str] = (),
) -> Verdict:
    """Check one case. fail: some check failed; pass: some check ran and none failed; skip: none ran.

    Reasons list the failures first, then notes worth reading on a pass (changes inside noise,
    missing baseline, metrics not measured). Against a baseline, a metric the baseline measured
    and this run did not fails (check kind `missing`, unless `allow_missing`), and settings
    fingerprints that differ in a field not in `allow_change` fail the case without applying the
    rules (check kind `settings`): the numbers measure something else.
    """
    checks: list[Check] = []
    for threshold in thresholds:
        checks += _threshold_checks(threshold, params, extra_info)
    rules = list(rules)
    if rules:
        if baseline_extra_info is None:
            checks.append(Check("rule", "*", ",".join(r.text for r in rules), "skip",
                                "no baseline result for this case; regression rules not applied"))
        else:
            settings = settings_check(baseline_extra_info, extra_info, allow_change)
            checks += [settings] if settings is not None else []
            for rule in rules if settings is None or not settings.failed else ():
                for path in rule.expand(baseline_extra_info, extra_info):
                    if path in catalogue.SPEEDUP_KEYS and params.get("drafter") == "none":
                        continue  # an AR case has no speedup: the rule is for its SD cases, not a gap here
                    checks.append(_rule_check(rule, path, extra_info, baseline_extra_info, strict, allow_missing))
    unstable = unstable_reason(extra_info, baseline_extra_info)
    if unstable:
        checks = [_as_unstable(c, unstable) for c in checks]
    failed = [c.message for c in checks if c.outcome == "fail"]
    notes = [c.message for c in checks if c.outcome in ("unstable", "noise", "skip")]
    if failed:
        verdict = "fail"
    elif any(c.outcome == "unstable" for c in checks):
        verdict = "unstable"
    elif any(c.outcome in ("pass", "noise") for c in checks):
        verdict = "pass"
    else:
        verdict = "skip"
    return Verdict(verdict, failed + notes, checks)


def settings_check(baseline: Mapping[str, Any], current: Mapping[str, Any],
                   allow_change: Collection[str] = ()) -> Check | None:
    """A failed `settings` check naming each differing fingerprint field with both values; a
    note when one run has no fingerprint (saved by an older version); None when they agree."""
    base, cur = baseline.get(FINGERPRINT_KEY), current.get(FINGERPRINT_KEY)
    if not base and not cur:
        return None
    if not base or not cur:
        if "error" in current:  # an errored case records no settings: its metrics fail as missing
            return None
        side = "the baseline" if not base else "this run"
        return Check("settings", "*", "settings", "skip",
                     f"{side} has no settings fingerprint (saved by an older pytest-speedbench): settings not compared")
    changes = fingerprint.differences(base, cur, allow_change)
    if not changes:
        return None
    fields = ",".join(c.partition(":")[0] for c in changes)
    return Check("settings", "*", "settings", "fail",
                 "settings differ from the baseline, so no rule was applied: " + "; ".join(changes)
                 + f" (a deliberate change is accepted with --allow-change {fields})")


def unstable_reason(extra_info: Mapping[str, Any], baseline_extra_info: Mapping[str, Any] | None) -> str | None:
    """Why the speedups of this comparison cannot be judged: the current run's case, or the
    baseline's, was marked unstable when measured (`extra_info.stability`)."""
    for label, info in (("this run", extra_info), ("the baseline", baseline_extra_info)):
        stability = info.get("stability") if isinstance(info, Mapping) else None
        if isinstance(stability, Mapping) and stability.get("verdict") == "unstable":
            reasons = "; ".join(str(r) for r in stability.get("reasons") or []) or "no reason recorded"
            return f"case unstable in {label}: {reasons}"
    return None


def _as_unstable(check: Check, reason: str) -> Check:
    """A failed speedup check on an unstable case reports the instability, not a regression."""
    if check.outcome != "fail" or check.metric not in catalogue.SPEEDUP_KEYS:  # drift moves only these
        return check
    return replace(check, outcome="unstable", message=f"{check.message}; not judged as a regression: {reason}")


# --------------------------------------------------------------------------- baseline lookup, JUnit


def same_params(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return all(norm(a.get(k)) == norm(b.get(k)) for k in PARAM_KEYS)


def find_baseline_entry(baseline_doc: Mapping[str, Any] | None, params: Mapping[str, Any],
                        name: str | None = None) -> Mapping[str, Any] | None:
    """The benchmark entry of `baseline_doc` with the same params (or, failing that, the same name)."""
    if not baseline_doc:
        return None
    benches = [b for b in baseline_doc.get("benchmarks", []) if isinstance(b, Mapping)]
    for bench in benches:
        if isinstance(bench.get("params"), Mapping) and same_params(bench["params"], params):
            return bench
    if name:
        for bench in benches:
            if name in (bench.get("name"), bench.get("param"), bench.get("fullname")):
                return bench
    return None


def find_baseline(baseline_doc: Mapping[str, Any] | None, params: Mapping[str, Any],
                  name: str | None = None) -> dict[str, Any] | None:
    """The baseline `extra_info` for the case with these params; None when the baseline lacks it."""
    bench = find_baseline_entry(baseline_doc, params, name)
    return dict(bench.get("extra_info") or {}) if bench is not None else None


def junit_properties(extra_info: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The catalogue's JUnit metrics as (name, value) pairs for `record_property`, names prefixed
    `speedbench.`; a scalar's interval follows it as `<name>_ci95`, text metrics come as they are."""
    props: list[tuple[str, str]] = []
    texts: list[tuple[str, str]] = []
    for spec in catalogue.metrics():
        for path in spec.paths(catalogue.JUNIT):
            if spec.kind == "text":
                if isinstance(extra_info.get(path), str):
                    texts.append((f"speedbench.{path}", extra_info[path]))
                continue
            value = lookup(extra_info, path)
            if value is None:
                continue
            props.append((f"speedbench.{path}", f"{value:.6g}"))
            interval = _pair(extra_info.get(f"{path}_ci95")) if "." not in path else None
            if interval:
                props.append((f"speedbench.{path}_ci95", f"{interval.lo:.6g},{interval.hi:.6g}"))
    props += texts
    gate = extra_info.get("gate")
    if isinstance(gate, Mapping) and gate.get("verdict"):
        props.append(("speedbench.gate", str(gate["verdict"])))
    return props
