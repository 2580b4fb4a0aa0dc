"""Every metric the results carry, declared once: name, unit, direction, interval, label, where shown.

The terminal summary (results/table.py), `speedbench compare`, the report page, the gates'
metric names and directions, the JUnit properties and docs/gates.md's metric table are all read
from `METRICS`, so a new metric is one row here: nothing else lists metric names. A row may
carry its own formula (`compute`, over the measured successful requests); rows without one are
computed together in metrics/run.py (AL and its source, latencies) or metrics/speedup.py.

Consumers read `METRICS` when called, never copy it at import, so a test can add a row with
monkeypatch and see it everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_speedbench.errors import UsageError

#: the places a metric can be shown; `MetricSpec.shown` maps some of them to what is shown
TABLE, COMPARE, REPORT, JUNIT = "table", "compare", "report", "junit"
VIEWS: tuple[str, ...] = (TABLE, COMPARE, REPORT, JUNIT)
#: a summary metric is an object {mean, std, p50, p90, p99}; a metric path names one statistic
SUMMARY_STATS: tuple[str, ...] = ("mean", "std", "p50", "p90", "p99")
HIGHER, LOWER, NEUTRAL = +1, -1, 0
#: the speedups over the drafter=none twin (rows below, computed in metrics/speedup.py): defined
#: for SD cases only, and the metrics a drift between the twin's and the case's measurement moves
SPEEDUP_KEYS: tuple[str, ...] = ("speedup_user_tps", "speedup_output_tps", "speedup_analytical")


@dataclass(frozen=True)
class MetricSpec:
    """One `extra_info` metric.

    `direction`: HIGHER when larger is better (a drop regresses), LOWER when smaller is better,
    NEUTRAL for counts and labels that no gate may name. `shown` maps a view (TABLE, COMPARE,
    REPORT, JUNIT) to the statistics shown there: () for a scalar, e.g. ("p50", "p99") for a
    summary. Statistics listed together share one table cell, as do rows with the same
    `column`.
    """

    name: str
    unit: str
    direction: int
    label: str
    #: `<name>_ci95` holds the run's 95% bootstrap interval [lo, hi]
    has_ci: bool = False
    #: "scalar" (a number), "summary" ({mean, std, p50, p90, p99}), "text" (a label, never gated) or
    #: "breakdown" ({bin: value}, with `<name>_detail` holding counts; never gated)
    kind: str = "scalar"
    #: `<name>_by_category` holds {category: value}; thresholds with `category` may bound it
    per_category: bool = False
    shown: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: terminal summary: column header (default: label) and scale/precision of the numbers
    column: str | None = None
    scale: float = 1.0
    digits: int = 2
    #: text metrics: how a value is abbreviated in the terminal summary
    abbreviations: Mapping[str, str] = field(default_factory=dict)
    #: the formula, when the metric is a function of the measured successful requests alone
    compute: Callable[[Sequence[Any]], Any] | None = None

    @property
    def gated(self) -> bool:
        """Whether rules and thresholds may name it."""
        return self.direction != NEUTRAL and self.kind not in ("text", "breakdown")

    def paths(self, view: str) -> list[str]:
        """The metric paths shown in `view`: [name] for a scalar, [name.stat, ...] for a summary."""
        if view not in self.shown:
            return []
        stats = self.shown[view]
        return [f"{self.name}.{s}" for s in stats] if stats else [self.name]

    def heading(self, path: str) -> str:
        """A short column heading for one path: 'AL', 'TTFT p99 s', 'user TPS'."""
        stat = path.partition(".")[2]
        words = [self.label] + ([stat] if stat and stat != "mean" else []) + (["s"] if self.unit == "s" else [])
        return " ".join(words)

    def bad_direction(self, path: str) -> int:
        """-1 when a decrease regresses, +1 when an increase does (a std regresses upward)."""
        if path.partition(".")[2] == "std":
            return +1
        return -1 if self.direction == HIGHER else +1


def _summary_row(name: str, unit: str, direction: int, label: str, **kw: Any) -> MetricSpec:
    return MetricSpec(name, unit, direction, label, kind="summary", **kw)


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("acceptance_length", "tokens/step", HIGHER, "AL", has_ci=True, per_category=True,
               shown={TABLE: (), COMPARE: (), REPORT: (), JUNIT: ()}, column="AL (95% CI)"),
    MetricSpec("acceptance_length_pooled", "tokens/step", HIGHER, "AL pooled", shown={COMPARE: (), JUNIT: ()}),
    # 1 + A / S: what vLLM (`vllm bench serve` "Acceptance length") and SGLang ("Accept length")
    # print for the same run, so the summary shows it beside AL under a name their users know
    MetricSpec("acceptance_length_per_draft", "tokens/drafted step", HIGHER, "AL per draft",
               shown={TABLE: (), COMPARE: (), JUNIT: ()}, column="engine AL/draft"),
    MetricSpec("drafted_step_fraction", "fraction", NEUTRAL, "drafted steps", shown={JUNIT: ()}),
    MetricSpec("acceptance_length_all_chunks", "tokens/chunk", HIGHER, "AL all chunks"),
    MetricSpec("al_source", "", NEUTRAL, "AL src", kind="text", shown={TABLE: (), JUNIT: ()},
               abbreviations={"engine_counters": "counters", "chunks": "chunks", "chunks+engine_counters": "mixed"}),
    MetricSpec("al_source_reason", "", NEUTRAL, "AL src reason", kind="text", shown={JUNIT: ()}),
    MetricSpec("al_histogram_source", "", NEUTRAL, "histogram src", kind="text", shown={JUNIT: ()}),
    MetricSpec("speedup_user_tps", "x", HIGHER, "speedup user", has_ci=True,
               shown={TABLE: (), COMPARE: (), REPORT: (), JUNIT: ()}, column="speedup user/out/anl"),
    MetricSpec("speedup_output_tps", "x", HIGHER, "speedup output", has_ci=True,
               shown={TABLE: (), COMPARE: (), REPORT: (), JUNIT: ()}, column="speedup user/out/anl"),
    MetricSpec("speedup_analytical", "x", HIGHER, "speedup analytical", has_ci=True,
               shown={TABLE: (), COMPARE: (), REPORT: (), JUNIT: ()}, column="speedup user/out/anl"),
    # with --goodput (metrics/goodput.py): requests meeting every latency SLO; the goodput speedup
    # (SD / AR goodput_rps, metrics/speedup.py) is not in SPEEDUP_KEYS: it has no interval and an
    # SLO threshold may move it beyond what the AL allows without the case being unstable
    MetricSpec("speedup_goodput", "x", HIGHER, "speedup goodput", shown={COMPARE: (), JUNIT: ()}),
    MetricSpec("goodput_rps", "requests/s", HIGHER, "goodput", shown={COMPARE: (), REPORT: (), JUNIT: ()}),
    MetricSpec("goodput_fraction", "fraction", HIGHER, "goodput share", shown={COMPARE: (), JUNIT: ()}),
    # open loop (--request-rate): the client's delay in sending a due request, and the wait for a
    # slot under the concurrency cap (measure/client.py); None in closed-loop runs
    _summary_row("send_lag_s", "s", NEUTRAL, "send lag", shown={JUNIT: ("p50", "p99")},
                 compute=lambda rs: _summary(rs, "request_send_lag")),
    _summary_row("cap_wait_s", "s", NEUTRAL, "cap wait", shown={JUNIT: ("p50", "p99")},
                 compute=lambda rs: _summary(rs, "request_cap_wait")),
    _summary_row("user_tps", "tokens/s", HIGHER, "user TPS",
                 shown={COMPARE: ("mean",), REPORT: ("mean",), JUNIT: ("mean",)}),
    _summary_row("ttft_s", "s", LOWER, "TTFT",
                 shown={TABLE: ("p50", "p99"), COMPARE: ("p50", "p99"), REPORT: ("p99",), JUNIT: ("p50", "p99")},
                 column="TTFT p50/p99 ms", scale=1e3, digits=1),
    MetricSpec("output_tps", "tokens/s", HIGHER, "output TPS", shown={TABLE: (), COMPARE: (), REPORT: (), JUNIT: ()},
               column="out TPS", digits=1),
    # the headline: total decode time / total decode steps (the server's own pooled figure);
    # the per-request mean (step_latency_s.mean) beside it
    MetricSpec("step_latency_pooled_s", "s", LOWER, "step latency pooled",
               shown={TABLE: (), COMPARE: (), REPORT: (), JUNIT: ()}, column="step ms pooled/req-mean",
               scale=1e3, digits=2),
    _summary_row("step_latency_s", "s", LOWER, "step latency", shown={TABLE: ("mean",), COMPARE: ("mean",)},
                 column="step ms pooled/req-mean", scale=1e3, digits=2),
    _summary_row("tpot_s", "s", LOWER, "TPOT",
                 shown={COMPARE: ("mean", "p99"), REPORT: ("mean",), JUNIT: ("mean", "p99")}),
    _summary_row("e2e_s", "s", LOWER, "E2E"),
    MetricSpec("num_requests", "requests", NEUTRAL, "requests", shown={JUNIT: ()}),
    MetricSpec("num_output_tokens", "tokens", NEUTRAL, "output tokens", shown={JUNIT: ()}),
    # acceptance breakdowns (metrics/breakdowns.py; plotted by the report, docs/breakdowns.md)
    MetricSpec("al_by_position", "tokens/step", NEUTRAL, "AL by output position", kind="breakdown"),
    MetricSpec("al_by_position_by_category", "tokens/step", NEUTRAL, "AL by category and position", kind="breakdown"),
    MetricSpec("al_thinking_answer", "tokens/step", NEUTRAL, "AL thinking/answer", kind="breakdown"),
    MetricSpec("accepted_share_by_rarity", "fraction", NEUTRAL, "accepted share by rarity", kind="breakdown"),
    # mean turn-0 prompt length in target tokens (with `per_request`, the rows speedbench sweep|predict read)
    MetricSpec("isl_mean", "tokens", NEUTRAL, "mean ISL", shown={JUNIT: ()}),
)


def _summary(requests: Sequence[Any], formula: str) -> dict[str, Any] | None:
    """{mean, std, p50, p90, p99} of a per-request formula of metrics/request.py; None when no
    request has a value (e.g. send lag in a closed-loop run)."""
    from pytest_speedbench.metrics import request, stats

    values = [v for v in (getattr(request, formula)(r) for r in requests) if v is not None]
    return stats.summarize(values) if values else None


def metrics() -> tuple[MetricSpec, ...]:
    """The catalogue, read at call time (see the module docstring)."""
    return METRICS


def by_name() -> dict[str, MetricSpec]:
    return {m.name: m for m in METRICS}


def spec_for(path: str) -> MetricSpec | None:
    """The row a metric path belongs to: 'ttft_s.p99' -> ttft_s, 'acceptance_length_by_category.x' -> AL."""
    head = path.partition(".")[0]
    table = by_name()
    if head in table:
        return table[head]
    if head.endswith("_by_category"):
        spec = table.get(head.removesuffix("_by_category"))
        return spec if spec is not None and spec.per_category else None
    return None


def paths(view: str) -> list[str]:
    """Every metric path shown in `view`, in catalogue order."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; views: {', '.join(VIEWS)}")
    return [p for m in METRICS for p in m.paths(view)]


def gated_paths() -> list[str]:
    """Every path a rule or threshold may name (per-category paths as a pattern)."""
    out: list[str] = []
    for m in METRICS:
        if not m.gated:
            continue
        out += [f"{m.name}.{s}" for s in SUMMARY_STATS] if m.kind == "summary" else [m.name]
    for m in METRICS:
        if m.gated and m.per_category:
            out += [f"{m.name}_by_category", f"{m.name}_by_category.<category>"]
    return out


def check_path(path: str, where: str) -> str:
    """`path` stripped when a rule, threshold or --metrics may name it; else a UsageError listing the valid ones."""
    path = path.strip()
    head, dot, tail = path.partition(".")
    spec = spec_for(path)
    if spec is not None and spec.gated:
        if head.endswith("_by_category"):
            return path if not dot or tail else _bad(path, where, "")
        if spec.kind == "summary" and tail in SUMMARY_STATS:
            return path
        if spec.kind == "scalar" and not dot:
            return path
    hint = ""
    if spec is not None and spec.kind == "summary" and not tail:
        hint = f" ({head} is a summary: name one statistic, e.g. {head}.p99)"
    return _bad(path, where, hint)


def _bad(path: str, where: str, hint: str) -> str:
    raise UsageError(f"{where}: unknown metric {path!r}{hint}; valid metrics: {', '.join(gated_paths())}")


def computed(requests: Sequence[Any]) -> dict[str, Any]:
    """Values of the rows that carry their own formula, over the measured successful requests."""
    return {m.name: m.compute(requests) for m in METRICS if m.compute is not None}


def markdown_table() -> str:
    """docs/gates.md's metric table: every gated metric and the direction that regresses."""
    lines = ["| metric | unit | direction that regresses |", "|---|---|---|"]
    for m in METRICS:
        if not m.gated:
            continue
        name = f"`{m.name}.<stat>`" if m.kind == "summary" else f"`{m.name}`"
        lines.append(f"| {name} | {m.unit} | {'drop' if m.direction == HIGHER else 'rise'} |")
        if m.per_category:
            lines.append(f"| `{m.name}_by_category.<category>` (e.g. `.coding`); `{m.name}_by_category` alone = "
                         f"every category present in both runs (rules only) | {m.unit} | "
                         f"{'drop' if m.direction == HIGHER else 'rise'} |")
    return "\n".join(lines)
