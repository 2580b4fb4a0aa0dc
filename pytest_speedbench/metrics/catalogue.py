"""Every key the results' `extra_info` carries, declared once: name, unit, direction, interval,
label, where shown, meaning.

The terminal summary (results/table.py), `speedbench compare`, the report page, the gates'
metric names and directions, the JUnit properties and the metric tables of docs/gates.md and
docs/metrics.md are all read from `METRICS`, so a new metric is one row here: nothing else lists
metric names. A row may carry its own formula (`compute`), which receives the run's reconciled
step view (metrics/run.py `StepView`: the measured successful requests, each with its decode
steps and their source, and the totals E, D, S, A), so an AL-family metric needs no edit in
run.py; rows without one are computed together in metrics/run.py (AL and its source,
latencies), metrics/speedup.py and metrics/rounds.py, or recorded by the case runner. Keys that
explain a figure rather than measure something are rows of kind DIAGNOSTIC: declared, never gated.

Consumers read `METRICS` when called, never copy it at import, so a test can add a row with
monkeypatch and see it everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_speedbench.errors import UsageError
from pytest_speedbench.metrics import steps

#: the places a metric can be shown; `MetricSpec.shown` maps some of them to what is shown
TABLE, COMPARE, REPORT, JUNIT = "table", "compare", "report", "junit"
VIEWS: tuple[str, ...] = (TABLE, COMPARE, REPORT, JUNIT)
#: a summary metric is an object {mean, std, p50, p90, p99}; a metric path names one statistic
SUMMARY_STATS: tuple[str, ...] = ("mean", "std", "p50", "p90", "p99")
HIGHER, LOWER, NEUTRAL = +1, -1, 0
#: kinds of rows: a number, an object of SUMMARY_STATS, a label, {bin: value}, or a diagnostic (any JSON value)
SCALAR, SUMMARY, TEXT, BREAKDOWN, DIAGNOSTIC = "scalar", "summary", "text", "breakdown", "diagnostic"
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
    #: SCALAR (a number), SUMMARY ({mean, std, p50, p90, p99}), TEXT (a label, never gated),
    #: BREAKDOWN ({bin: value}, with `<name>_detail` holding counts; never gated) or DIAGNOSTIC
    #: (any JSON value that explains a figure, never gated)
    kind: str = SCALAR
    #: `<name>_by_category` holds {category: value}; thresholds with `category` may bound it
    per_category: bool = False
    shown: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: terminal summary: column header (default: label) and scale/precision of the numbers
    column: str | None = None
    scale: float = 1.0
    digits: int = 2
    #: text metrics: how a value is abbreviated in the terminal summary
    abbreviations: Mapping[str, str] = field(default_factory=dict)
    #: the formula, over the run's reconciled step view (metrics/run.py `StepView`)
    compute: Callable[[Any], Any] | None = None
    #: what it means, for docs/metrics.md's generated table
    doc: str = ""

    @property
    def gated(self) -> bool:
        """Whether rules and thresholds may name it."""
        return self.direction != NEUTRAL and self.kind in (SCALAR, SUMMARY)

    def keys(self) -> list[str]:
        """The `extra_info` keys this row declares: its name, `<name>_ci95`, `<name>_by_category`,
        `<name>_detail` (a breakdown's counts)."""
        return ([self.name] + [f"{self.name}_ci95"] * self.has_ci + [f"{self.name}_by_category"] * self.per_category
                + [f"{self.name}_detail"] * (self.kind == BREAKDOWN))

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
    return MetricSpec(name, unit, direction, label, kind=SUMMARY, **kw)


def _diagnostic(name: str, unit: str, doc: str) -> MetricSpec:
    return MetricSpec(name, unit, NEUTRAL, name, kind=DIAGNOSTIC, doc=doc)


#: the keys that explain the figures rather than measure something: name | unit | meaning
_DIAGNOSTICS = """
acceptance_length_by_category_source |             | the AL source of the per-category ALs
acceptance_length_chunks             | tokens/step | mean request AL with D from the chunks alone
acceptance_length_counters           | tokens/step | mean request AL with D from the engine counters alone
al_source_reasons                    |             | {reason: requests}: every reason seen
al_source_detail                     |             | the reason in words
num_decode_steps                     | steps       | D summed over the requests
num_decode_steps_server              | steps       | the server's own decode-step count of the run (vLLM), when it has one
decode_steps_server_residual         | steps       | steps the per-request reconciliation missed before the cut's hidden steps were assigned
num_drafted_steps                    | steps       | S summed (None when the engine does not count it)
num_accepted_drafts                  | tokens      | A summed, the engine's own count
al_histogram                         |             | {k: decode steps that emitted k tokens}, from the AL's source
al_histogram_source_reason           |             | why the histogram has that source
al_histogram_chunks                  |             | the histogram of the streamed chunks, for diagnosis
conditional_acceptance_rate          |             | per draft position i: P(>= i accepted | >= i-1 accepted)
conditional_acceptance_source        |             | where the conditional rates came from
conditional_acceptance_basis         |             | drafted steps, or decode steps when S is unknown
draft_length                         | tokens      | gamma: --draft-length, else the longest observed draft
step_latency_effective_mean_s        | s           | mean per request decode time / reconciled D
num_steps                            | steps       | streamed decode steps (chunks after the first)
num_single_chunk_requests            | requests    | requests whose whole answer came in one chunk
num_errors                           | requests    | measured requests that failed
num_empty                            | requests    | measured requests that returned no token
num_warmup                           | requests    | warmup requests (outside every figure)
speedup_analytical_inputs            |             | the step latencies and AL the analytical speedup used
speedup_baseline                     |             | the twin case the speedups are over
speedup_note                         |             | why a speedup is missing
speedup_method                       |             | how the speedups were measured (one pass, interleaved rounds)
speedup_output_tps_rounds            |             | output-TPS speedup per round
output_tps_rounds                    | tokens/s    | output TPS per pass of the rounds
stability                            |             | {verdict, reasons, rounds, round_speedups_user_tps, round_effect}
interleaved_rounds                   |             | on a twin's entry: {SD case: the AR rounds measured beside it}
client                               |             | the client's self-diagnostics: transport, shards, loop lag, rounds
engine_counters                      |             | run-level engine counters (vLLM Prometheus deltas), for audit
engine_key                           |             | the engine instance the case ran on (engine-drafter[-gN])
per_request                          |             | one row per measured request turn (speedbench sweep|predict read them)
state_reset                          |             | what reset the engine's cross-request state before the case
state_reset_rounds                   |             | the reset before each SD pass of the rounds
warmup_prompts                       |             | {source: outside|measured, count, prompt_ids}
warnings                             |             | why earlier requests may have changed this case's acceptance
repeat_check                         |             | --speedbench-repeat-check: the second pass's AL against the first's interval
gate                                 |             | {verdict: pass|fail|skip|unstable, reasons, checks}
error                                |             | why the case could not be measured
duration_s                           | s           | --speedbench-shard: the case's wall time, for the next plan's cost model
shard                                |             | --speedbench-shard: the shard (K/N) that measured the case
goodput_requests                     | requests    | --goodput: measured requests that met every SLO
goodput_slos_ms                      |             | --goodput: the SLOs applied, in ms by metric
goodput_rps_rounds                   | requests/s  | --goodput with rounds: goodput per pass
placement                            |             | GPUs, xdist worker and parallel settings the case ran with
settings_fingerprint                 |             | what besides the code changes the numbers (model, dataset, lengths, hardware...): a gate refuses to compare differing ones
"""


def _per_draft_al(view: Any) -> float | None:
    """1 + A / S: the engines' own "mean acceptance length" (A before truncation)."""
    return steps.per_draft_al(view.accepted or 0, view.drafted_steps or 0)


def _drafted_step_fraction(view: Any) -> float | None:
    """S / D; None when the engine does not count drafted steps."""
    return steps.drafted_step_fraction(view.drafted_steps, view.decode_steps) if view.drafted_steps is not None else None


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("acceptance_length", "tokens/step", HIGHER, "AL", has_ci=True, per_category=True,
               shown={TABLE: (), COMPARE: (), REPORT: (), JUNIT: ()}, column="AL (95% CI)",
               doc="mean over requests of E / D (tokens after the prefill token per decode step)"),
    MetricSpec("acceptance_length_pooled", "tokens/step", HIGHER, "AL pooled", shown={COMPARE: (), JUNIT: ()},
               doc="sum E / sum D over the requests"),
    # 1 + A / S: what vLLM (`vllm bench serve` "Acceptance length") and SGLang ("Accept length")
    # print for the same run, so the summary shows it beside AL under a name their users know
    MetricSpec("acceptance_length_per_draft", "tokens/drafted step", HIGHER, "AL per draft",
               shown={TABLE: (), COMPARE: (), JUNIT: ()}, column="engine AL/draft", compute=_per_draft_al,
               doc="1 + A / S, the engines' own mean acceptance length"),
    MetricSpec("drafted_step_fraction", "fraction", NEUTRAL, "drafted steps", shown={JUNIT: ()},
               compute=_drafted_step_fraction, doc="S / D: decode steps with a proposed draft"),
    MetricSpec("acceptance_length_all_chunks", "tokens/chunk", HIGHER, "AL all chunks",
               doc="mean tokens per streamed chunk, chunk 0 included (specdec_bench's definition)"),
    MetricSpec("al_source", "", NEUTRAL, "AL src", kind=TEXT, shown={TABLE: (), JUNIT: ()},
               abbreviations={"engine_counters": "counters", "chunks": "chunks", "chunks+engine_counters": "mixed"},
               doc="where D came from: chunks, engine_counters or chunks+engine_counters"),
    MetricSpec("al_source_reason", "", NEUTRAL, "AL src reason", kind=TEXT, shown={JUNIT: ()},
               doc="why, the first reason of the list in 'Where D comes from' any request has"),
    MetricSpec("al_histogram_source", "", NEUTRAL, "histogram src", kind=TEXT, shown={JUNIT: ()},
               doc="where the histogram and conditional rates came from (the AL's own source)"),
    MetricSpec("speedup_user_tps", "x", HIGHER, "speedup user", has_ci=True,
               shown={TABLE: (), COMPARE: (), REPORT: (), JUNIT: ()}, column="speedup user/out/anl",
               doc="user TPS(SD) / user TPS(AR) against the drafter=none twin"),
    MetricSpec("speedup_output_tps", "x", HIGHER, "speedup output", has_ci=True,
               shown={TABLE: (), COMPARE: (), REPORT: (), JUNIT: ()}, column="speedup user/out/anl",
               doc="output TPS(SD) / output TPS(AR)"),
    MetricSpec("speedup_analytical", "x", HIGHER, "speedup analytical", has_ci=True,
               shown={TABLE: (), COMPARE: (), REPORT: (), JUNIT: ()}, column="speedup user/out/anl",
               doc="step_latency(AR) x AL(SD) / step_latency(SD) (SPEED-Bench)"),
    # with --goodput (metrics/goodput.py): requests meeting every latency SLO; the goodput speedup
    # (SD / AR goodput_rps, metrics/speedup.py) is not in SPEEDUP_KEYS: it has no interval and an
    # SLO threshold may move it beyond what the AL allows without the case being unstable
    MetricSpec("speedup_goodput", "x", HIGHER, "speedup goodput", shown={COMPARE: (), JUNIT: ()},
               doc="goodput_rps(SD) / goodput_rps(AR), with --goodput"),
    MetricSpec("goodput_rps", "requests/s", HIGHER, "goodput", shown={COMPARE: (), REPORT: (), JUNIT: ()},
               doc="measured requests meeting every --goodput SLO / the measured window"),
    MetricSpec("goodput_fraction", "fraction", HIGHER, "goodput share", shown={COMPARE: (), JUNIT: ()},
               doc="share of the measured successful requests meeting every SLO"),
    # open loop (--request-rate): the client's delay in sending a due request, and the wait for a
    # slot under the concurrency cap (measure/client.py); None in closed-loop runs
    _summary_row("send_lag_s", "s", NEUTRAL, "send lag", shown={JUNIT: ("p50", "p99")},
                 compute=lambda view: _summary(view.requests, "request_send_lag"),
                 doc="open loop: actual send time - scheduled send time"),
    _summary_row("cap_wait_s", "s", NEUTRAL, "cap wait", shown={JUNIT: ("p50", "p99")},
                 compute=lambda view: _summary(view.requests, "request_cap_wait"),
                 doc="open loop: time a due request waited for a slot under --batch-size"),
    _summary_row("user_tps", "tokens/s", HIGHER, "user TPS",
                 shown={COMPARE: ("mean",), REPORT: ("mean",), JUNIT: ("mean",)},
                 doc="per request E / (t_{n-1} - t_0)"),
    _summary_row("ttft_s", "s", LOWER, "TTFT",
                 shown={TABLE: ("p50", "p99"), COMPARE: ("p50", "p99"), REPORT: ("p99",), JUNIT: ("p50", "p99")},
                 column="TTFT p50/p99 ms", scale=1e3, digits=1, doc="per request t_0 - t_s"),
    MetricSpec("output_tps", "tokens/s", HIGHER, "output TPS", shown={TABLE: (), COMPARE: (), REPORT: (), JUNIT: ()},
               column="out TPS", digits=1,
               doc="tokens of the measured requests / their window (rounds: mean of the passes)"),
    # the headline: total decode time / total decode steps (the server's own pooled figure);
    # the per-request mean (step_latency_s.mean) beside it
    MetricSpec("step_latency_pooled_s", "s", LOWER, "step latency pooled",
               shown={TABLE: (), COMPARE: (), REPORT: (), JUNIT: ()}, column="step ms pooled/req-mean",
               scale=1e3, digits=2, doc="sum of decode times / sum of reconciled D (the server's own pooled figure)"),
    _summary_row("step_latency_s", "s", LOWER, "step latency", shown={TABLE: ("mean",), COMPARE: ("mean",)},
                 column="step ms pooled/req-mean", scale=1e3, digits=2,
                 doc="per request (t_{n-1} - t_0) / reconciled D"),
    _summary_row("tpot_s", "s", LOWER, "TPOT",
                 shown={COMPARE: ("mean", "p99"), REPORT: ("mean",), JUNIT: ("mean", "p99")},
                 doc="per request (t_{n-1} - t_0) / E"),
    _summary_row("e2e_s", "s", LOWER, "E2E", doc="per request t_{n-1} - t_s"),
    MetricSpec("num_requests", "requests", NEUTRAL, "requests", shown={JUNIT: ()},
               doc="measured requests that succeeded"),
    MetricSpec("num_output_tokens", "tokens", NEUTRAL, "output tokens", shown={JUNIT: ()},
               doc="tokens of the measured successful requests"),
    MetricSpec("isl_mean", "tokens", NEUTRAL, "mean ISL", shown={JUNIT: ()},
               doc="mean turn-0 prompt length in target tokens"),
    # acceptance breakdowns (metrics/breakdowns.py; plotted by the report, docs/breakdowns.md)
    MetricSpec("al_by_position", "tokens/step", NEUTRAL, "AL by output position", kind=BREAKDOWN,
               doc="AL per bin of output position (decode steps)"),
    MetricSpec("al_by_position_by_category", "tokens/step", NEUTRAL, "AL by category and position", kind=BREAKDOWN,
               doc="AL per category, per bin of output position"),
    MetricSpec("al_thinking_answer", "tokens/step", NEUTRAL, "AL thinking/answer", kind=BREAKDOWN,
               doc="AL before and after the --thinking-end marker"),
    MetricSpec("accepted_share_by_rarity", "fraction", NEUTRAL, "accepted share by rarity", kind=BREAKDOWN,
               doc="share of draft-accepted tokens per token-rarity bin (rank corpus)"),
    *(_diagnostic(*(cell.strip() for cell in line.split("|", 2))) for line in _DIAGNOSTICS.strip().splitlines()),
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


def computed(view: Any) -> dict[str, Any]:
    """Values of the rows that carry their own formula, over the run's reconciled step view."""
    return {m.name: m.compute(view) for m in METRICS if m.compute is not None}


def declared_keys() -> set[str]:
    """Every `extra_info` key a row declares."""
    return {key for m in METRICS for key in m.keys()}


def undeclared(extra_info: Mapping[str, Any]) -> list[str]:
    """The keys of `extra_info` no row declares (the results schema is the catalogue)."""
    known = declared_keys()
    return sorted(k for k in extra_info if k not in known)


def reference_table() -> str:
    """docs/metrics.md's table: every row, what it is, where it is shown and what it means."""
    lines = ["| key | kind | unit | regresses on | shown in | meaning |", "|---|---|---|---|---|---|"]
    for m in METRICS:
        extra = [k for k in m.keys()[1:]]
        name = f"`{m.name}`" + "".join(f", `{k}`" for k in extra)
        regresses = ("drop" if m.direction == HIGHER else "rise") if m.gated else ""
        where = ", ".join(m.shown)
        meaning = m.doc.replace("|", "\\|")
        lines.append(f"| {name} | {m.kind} | {m.unit} | {regresses} | {where} | {meaning} |")
    return "\n".join(lines)


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
