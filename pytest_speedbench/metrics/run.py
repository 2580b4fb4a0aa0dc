"""Run metrics from request records: pure functions, no I/O, no HTTP (docs/metrics.md).

Per-request formulas live in request.py, decode-step reconciliation in steps.py, speedups in
speedup.py, the list of metrics in catalogue.py.

For one request turn: send time t_s; chunks j = 0..n-1 arriving at t_j carrying L_j tokens;
N = sum L_j. Chunk 0 is prefill's output. AL means tokens per decode step for every engine:
request AL = (N - L_0) / D, D = decode steps (drafted or not), taken from the chunks when the
stream is step-framed and from the engine counters otherwise (metrics/steps.py says how, and
names the cause). The headline AL, its CI, the per-category ALs and the pooled AL all use the
same per-request D, so the overall AL lies inside its categories' range.
acceptance_length_per_draft = 1 + A / S is the engines' own figure (drafted steps only).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pytest_speedbench.metrics import breakdowns, catalogue, goodput, stats, steps
from pytest_speedbench.metrics.request import (
    request_al,
    request_decode_time,
    request_e2e,
    request_step_tokens,
    request_steps,
    request_tpot,
    request_ttft,
    request_user_tps,
)
from pytest_speedbench.metrics.steps import SOURCE_CHUNKS, SOURCE_COUNTERS, StepCount
from pytest_speedbench.engines.counters import Counters
from pytest_speedbench.measure.records import RequestRecord, RunRecords

SOURCE_MIXED = "chunks+engine_counters"  # per request, some from each
SOURCE_BURSTS = "engine_counters+bursts"  # counter step count, step lengths from event bursts


# --- per-request decode steps -------------------------------------------------------------


def request_decode_steps(r: RequestRecord, gamma: int | None, step_framed: bool = True) -> StepCount:
    """The request's decode steps D, source and reason (steps.reconcile_steps on its counters)."""
    return steps.reconcile_steps(request_step_tokens(r), request_steps(r), r.counters, gamma=gamma,
                                 step_framed=step_framed)


def request_counter_al(r: RequestRecord) -> float | None:
    """Counter AL = (N - L_0) / D_counters (D_counters = decode_steps, or N - L_0 - accepted)."""
    tokens = request_step_tokens(r)
    d = steps.counter_decode_steps(tokens, r.counters)
    return tokens / d if d else None


# --- aggregate helpers ----------------------------------------------------------------------


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def step_lengths(requests: Iterable[RequestRecord]) -> list[int]:
    """L_j of every verification step (chunks 1..n-1) over `requests`."""
    return [k for r in requests for k in r.chunk_tokens[1:]]


def al_histogram(lengths: Sequence[int]) -> dict[str, int]:
    """Steps per accepted length k, keyed str(k) for JSON, in increasing k."""
    counts = Counter(lengths)
    return {str(k): counts[k] for k in sorted(counts)}


def conditional_rates_from_lengths(
    lengths: Sequence[int], gamma: int, drafted_steps: int | None = None
) -> list[float | None]:
    """Rate at draft position i = 1..gamma over drafted steps: steps with L >= i+1 / steps with
    L >= i, where the position-1 denominator is the drafted steps S when known (undrafted steps
    also emit L = 1), else every step (each step assumed drafted)."""
    arr = np.asarray(lengths, dtype=int)
    rates: list[float | None] = []
    for i in range(1, gamma + 1):
        reached = int((arr >= i).sum()) if i > 1 or drafted_steps is None else drafted_steps
        rates.append(int((arr >= i + 1).sum()) / reached if reached else None)
    return rates


def conditional_rates_from_counters(steps: int, accepted_per_pos: Sequence[float], gamma: int) -> list[float | None]:
    """Over drafted steps S (= `steps`): position 1: acc[0] / S; position i: acc[i-1] / acc[i-2]; None where unknown."""
    rates: list[float | None] = []
    for i in range(1, gamma + 1):
        if i > len(accepted_per_pos):
            rates.append(None)
            continue
        den = steps if i == 1 else accepted_per_pos[i - 2]
        rates.append(float(accepted_per_pos[i - 1]) / den if den else None)
    return rates


def histogram_from_per_pos(steps: int, accepted_per_pos: Sequence[float], undrafted: int = 0) -> dict[str, int]:
    """Exact decode-step histogram from counters: with c_i = drafted steps accepting >= i drafts
    (c_0 = drafted steps), steps emitting k tokens = c_{k-1} - c_k (k = 1..gamma) and c_gamma
    (k = gamma + 1); the `undrafted` decode steps (D - S) emit 1 token each and join k = 1.

    Its mean is (D + sum c_i) / D = counter AL, so plots built on it agree with the table.
    """
    reached = [float(steps), *(float(c) for c in accepted_per_pos)]
    counts = {k: reached[k - 1] - (reached[k] if k < len(reached) else 0.0) for k in range(1, len(reached) + 1)}
    counts[1] = counts.get(1, 0.0) + max(undrafted, 0)
    return {str(k): int(round(v)) for k, v in counts.items() if round(v) > 0}


def burst_step_lengths(r: RequestRecord, steps: int) -> tuple[list[int], float] | None:
    """Verification-step lengths of a one-token-per-event stream, given the engine's step count.

    A server that streams one token per event (llama-server) sends the 1 + accepted tokens of
    one step back to back, while steps are a forward pass apart. With s = counter steps, the
    decode events (chunks 1..n-1) are cut at the s - 1 largest arrival gaps, so there are
    exactly s steps carrying exactly the emitted tokens: the lengths' mean is the counter AL by
    construction. Returns (lengths, separation), separation = smallest cut gap / largest uncut
    gap (> 1: the bursts are unambiguous; inf when nothing is left uncut), or None when the
    stream cannot hold s steps (fewer decode events than steps).
    """
    times, tokens = r.chunk_times[1:], r.chunk_tokens[1:]
    if steps <= 0 or len(tokens) < steps:
        return None
    gaps = np.diff(np.asarray(times, dtype=float))
    order = np.argsort(-gaps, kind="stable")
    cut = np.sort(order[: steps - 1])
    lengths, start = [], 0
    for c in cut:
        lengths.append(int(sum(tokens[start : c + 1])))
        start = c + 1
    lengths.append(int(sum(tokens[start:])))
    uncut = gaps[order[steps - 1 :]]
    if steps > 1 and uncut.size:
        separation = float(gaps[cut].min() / uncut.max()) if uncut.max() > 0 else float("inf")
    else:
        separation = float("inf")
    return lengths, separation


@dataclass(frozen=True, slots=True)
class StepView:
    """Decode steps of the measured requests, all from one reconciliation (metrics/steps.py).

    Per request (`per_request`, D > 0 only) when any request has counters or none has; from
    run-level counters (vLLM's Prometheus deltas) otherwise, when `run_level` holds the pooled
    StepCount and per-request D is known only when the chunks won. A catalogue row's `compute`
    receives it: `requests` are the measured successful requests (their times, tokens and
    counters), `per_request` their reconciled decode steps, the rest the run's totals.
    """

    per_request: list[tuple[RequestRecord, StepCount]]
    run_level: StepCount | None
    tokens: int  # E summed
    decode_steps: int  # D summed
    accepted: int | None  # A summed (engine's own count, before end-of-request truncation)
    drafted_steps: int | None  # S summed; None when the engine does not say
    accepted_per_pos: list[float] | None
    #: the server's own decode-step count of the run (vLLM: inter-token-latency samples), and how
    #: many steps the per-request counts missed before steps.assign_server_steps (None: no count)
    server_steps: int | None = None
    server_residual: int | None = None
    requests: Sequence[RequestRecord] = ()

    @property
    def counts(self) -> list[StepCount]:
        return [self.run_level] if self.run_level is not None else [c for _, c in self.per_request]

    @property
    def source(self) -> str | None:
        sources = {c.source for c in self.counts}
        if not sources:
            return None
        return sources.pop() if len(sources) == 1 else SOURCE_MIXED

    @property
    def reasons(self) -> dict[str, int]:
        return dict(Counter(c.reason for c in self.counts))

    @property
    def request_als(self) -> list[tuple[RequestRecord, float]]:
        """(request, E / D) per request; empty when only run-level counters decided against chunks."""
        if self.run_level is not None and self.run_level.source != SOURCE_CHUNKS:
            return []
        return [(r, request_step_tokens(r) / c.decode_steps) for r, c in self.per_request if c.decode_steps > 0]


def _has_counts(c: Counters | None) -> bool:
    return bool(c) and (c.get("decode_steps") is not None or c.get("accepted") is not None)


def _sum_key(counters: Sequence[Counters], key: str) -> int | None:
    values = [c.get(key) for c in counters]
    return None if not values or any(v is None for v in values) else int(sum(values))


def build_step_view(requests: Sequence[RequestRecord], run_counters: Counters | None, gamma: int | None) -> StepView:
    """Reconcile every request's decode steps (or the run's, with run-level counters only)."""
    framed = any(k > 1 for r in requests for k in r.chunk_tokens[1:])
    tokens = sum(request_step_tokens(r) for r in requests)
    if any(_has_counts(r.counters) for r in requests) or not _has_counts(run_counters):
        per = [(r, request_decode_steps(r, gamma, framed)) for r in requests]
        per = [(r, c) for r, c in per if c.decode_steps > 0]
        server = run_counters.get("decode_steps") if run_counters else None
        residual = None
        if server is not None and per:
            hidden = [steps.hidden_cut_steps(request_step_tokens(r), request_steps(r), r.counters, gamma=gamma,
                                             step_lengths=r.chunk_tokens[1:]) for r, _ in per]
            counts, residual = steps.assign_server_steps([c for _, c in per], hidden,
                                                         [r.chunk_tokens[-1] for r, _ in per], int(server))
            per = [(r, c) for (r, _), c in zip(per, counts)]
        counted = [r.counters for r in requests if _has_counts(r.counters)]
        accepted = _sum_key(counted, "accepted") if counted else None
        drafted = _sum_key(counted, "drafted_steps") if counted else None
        per_pos = _sum_positions([c.get("accepted_per_pos") for c in counted]) if counted else None
        return StepView(per, None, tokens, sum(c.decode_steps for _, c in per), accepted, drafted, per_pos,
                        int(server) if server is not None else None, residual, requests)
    assert run_counters is not None
    chunk_steps = sum(request_steps(r) for r in requests)
    window = gamma * len(requests) if gamma is not None else None
    run_count = steps.reconcile_steps(tokens, chunk_steps, run_counters, gamma=window, step_framed=framed)
    per = [(r, StepCount(request_steps(r), SOURCE_CHUNKS, run_count.reason)) for r in requests if request_steps(r)]
    drafted = run_counters.get("drafted_steps")
    per_pos = run_counters.get("accepted_per_pos")
    server = run_counters.get("decode_steps")
    return StepView(per, run_count, tokens, run_count.decode_steps, run_counters.get("accepted"),
                    int(drafted) if drafted is not None else None, list(per_pos) if per_pos else None,
                    int(server) if server is not None else None, int(server) - chunk_steps if server is not None else None,
                    requests)


def framed_requests(view: StepView) -> tuple[list[breakdowns.FramedRequest], int]:
    """(requests whose every decode step's length is known, number of the others), from the
    same reconciliation as the headline AL: chunk steps where the chunks won; the burst split of
    a one-token-per-event stream cut to the counters' step count; otherwise unframed
    (coalesced events overruled by counters, run-level counters only)."""
    if view.run_level is not None and view.run_level.source != SOURCE_CHUNKS:
        return [], len(view.per_request)
    framed: list[breakdowns.FramedRequest] = []
    unframed = 0
    for r, count in view.per_request:
        lengths: list[int] | None = None
        if count.source == SOURCE_CHUNKS:
            lengths = list(r.chunk_tokens[1:])
        elif all(k == 1 for k in r.chunk_tokens[1:]):
            split = burst_step_lengths(r, count.decode_steps)
            lengths = split[0] if split is not None else None
        if lengths is None or len(lengths) != count.decode_steps or sum(lengths) != request_step_tokens(r):
            unframed += 1
            continue
        framed.append(breakdowns.frame(r, lengths))
    return framed, unframed


def authoritative_step_histogram(
    requests: Sequence[RequestRecord], view: StepView, lengths: Sequence[int]
) -> tuple[dict[str, int], list[int] | None, str | None, str]:
    """The decode-step histogram from the same source as the AL: (histogram, step lengths or
    None, source, reason). Chunks when every D came from chunks; else counters' per-position
    counts (exact, undrafted steps added at k = 1); else one-token-per-event bursts cut to the
    counter step count; else none, rather than a chunk histogram that contradicts the AL.
    """
    if view.source in (SOURCE_CHUNKS, None):
        return al_histogram(lengths), list(lengths), SOURCE_CHUNKS, "step lengths from streamed chunks"
    drafted = view.drafted_steps if view.drafted_steps is not None else view.decode_steps
    if view.accepted_per_pos is not None and drafted > 0:
        return (histogram_from_per_pos(drafted, view.accepted_per_pos, view.decode_steps - drafted), None,
                SOURCE_COUNTERS, "engine per-position accepted counts")
    if view.run_level is None and all(all(k == 1 for k in r.chunk_tokens[1:]) for r, _ in view.per_request):
        split = [burst_step_lengths(r, c.decode_steps) for r, c in view.per_request]
        if split and all(s is not None for s in split):
            burst_lengths = [k for s in split for k in s[0]]  # type: ignore[index]
            separation = min(s[1] for s in split)  # type: ignore[index]
            clear = "unambiguous" if separation > 1 else "ambiguous in places"
            return (al_histogram(burst_lengths), burst_lengths, SOURCE_BURSTS,
                    f"one token per event: tokens grouped into the engine's step count at the largest arrival "
                    f"gaps (bursts {clear}, separation {separation:.3g})")
    return {}, None, None, "decode steps from engine counters, which give no per-step breakdown"


def output_tps(requests: Sequence[RequestRecord]) -> float | None:
    """Total tokens / (last arrival - first send) of `requests` (the measured window)."""
    if not requests:
        return None
    window = max(r.chunk_times[-1] for r in requests) - min(r.t_send for r in requests)
    return sum(r.num_tokens for r in requests) / window if window > 0 else None


def _sum_positions(lists: Sequence[Sequence[float] | None]) -> list[float] | None:
    """Element-wise sum of accepted_per_pos lists; None unless every request has one."""
    if not lists or any(not lst for lst in lists):
        return None
    width = max(len(lst) for lst in lists)
    total = np.zeros(width)
    for lst in lists:
        total[: len(lst)] += np.asarray(lst, dtype=float)
    return total.tolist()


# --- run metrics ----------------------------------------------------------------------------


def _gamma(draft_length: int | None, view: StepView, hist_lengths: list[int] | None) -> int:
    if draft_length is not None:
        return draft_length
    if view.accepted_per_pos is not None:
        return len(view.accepted_per_pos)
    return max(max(hist_lengths) - 1, 0) if hist_lengths else 0


def _rates(view: StepView, hist_lengths: list[int] | None, hist_source: str | None, gamma: int
           ) -> tuple[list[float | None], str | None]:
    """Conditional acceptance over drafted steps, from the AL's own source."""
    drafted = view.drafted_steps
    if view.source not in (SOURCE_CHUNKS, None) and view.accepted_per_pos is not None:
        den = drafted if drafted is not None else view.decode_steps
        return conditional_rates_from_counters(den, view.accepted_per_pos, gamma), SOURCE_COUNTERS
    if hist_lengths is not None:
        return conditional_rates_from_lengths(hist_lengths, gamma, drafted), hist_source
    return [None] * gamma, None


def compute_run_metrics(
    run: RunRecords, *, draft_length: int | None = None, seed: int = 0, n_boot: int = 1000,
    analysis: breakdowns.BreakdownInputs | None = None, slos: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The `extra_info` metrics (docs/metrics.md) (speedups and gate excluded) for one run.

    Warmup requests are ignored; requests with an error (or without any token) are excluded
    and counted. `draft_length` fixes gamma for the conditional acceptance rates and bounds the
    end-of-request truncation; without it gamma is the longest observed draft. `analysis`
    holds the reasoning marker and token ranks of the breakdowns (metrics/breakdowns.py);
    `slos` (seconds by metric name) adds goodput (metrics/goodput.py).
    """
    measured = run.measured
    ok = [r for r in measured if r.ok]
    lengths = step_lengths(ok)
    chunk_als = [a for a in (request_al(r) for r in ok) if a is not None]
    view = build_step_view(ok, run.engine_counters, draft_length)
    request_als = view.request_als
    als = [a for _, a in request_als]
    pooled = view.tokens / view.decode_steps if view.decode_steps > 0 else None
    al = _mean(als) if als else pooled
    reason = steps.run_reason(list(view.reasons))
    histogram, hist_lengths, hist_source, hist_reason = authoritative_step_histogram(ok, view, lengths)
    gamma = _gamma(draft_length, view, hist_lengths)
    rates, rates_source = _rates(view, hist_lengths, hist_source, gamma)
    counter_als = [a for a in (request_counter_al(r) for r in ok) if a is not None]
    all_chunks = [k for r in ok for k in r.chunk_tokens]
    return {
        "acceptance_length": al,
        "acceptance_length_ci95": stats.bootstrap_ci(als, n_boot=n_boot, seed=seed) if als else None,
        "acceptance_length_pooled": pooled,
        "acceptance_length_all_chunks": float(np.mean(all_chunks)) if all_chunks else None,
        "acceptance_length_by_category": _al_by_category(ok, request_als),
        "acceptance_length_by_category_source": view.source,
        "acceptance_length_chunks": _mean(chunk_als),
        "acceptance_length_counters": _mean(counter_als) if counter_als else _run_counter_al(view),
        "al_source": view.source,
        "al_source_reason": reason,
        "al_source_reasons": view.reasons,
        "al_source_detail": steps.REASON_TEXT.get(reason or "", "no request had a decode step"),
        "num_decode_steps": view.decode_steps,
        # the server's own count of the run's decode steps, when it has one (vLLM), and how many
        # steps the per-request reconciliation missed before the cut's hidden steps were assigned
        "num_decode_steps_server": view.server_steps,
        "decode_steps_server_residual": view.server_residual,
        "num_drafted_steps": view.drafted_steps,
        "num_accepted_drafts": view.accepted,
        "al_histogram": histogram,
        "al_histogram_source": hist_source,
        "al_histogram_source_reason": hist_reason,
        "al_histogram_chunks": al_histogram(lengths),
        "conditional_acceptance_rate": rates,
        "conditional_acceptance_source": rates_source,
        "conditional_acceptance_basis": "drafted steps" if view.drafted_steps is not None
        else "decode steps (every step assumed drafted)",
        "draft_length": gamma,
        "ttft_s": stats.summarize([request_ttft(r) for r in ok]),
        "step_latency_s": stats.summarize([s for _, s in _latency_rows(view)]),
        "step_latency_pooled_s": pooled_step_latency(view),
        "step_latency_effective_mean_s": _effective_step_latency(view),
        "tpot_s": stats.summarize([request_tpot(r) for r in ok]),
        "e2e_s": stats.summarize([request_e2e(r) for r in ok]),
        "user_tps": stats.summarize([request_user_tps(r) for r in ok]),
        "output_tps": output_tps(ok),
        "num_requests": len(ok),
        "num_output_tokens": sum(r.num_tokens for r in ok),
        "num_steps": len(lengths),
        "num_single_chunk_requests": sum(1 for r in ok if request_steps(r) == 0),
        "num_errors": sum(1 for r in measured if r.error is not None),
        "num_empty": sum(1 for r in measured if r.error is None and not r.chunk_tokens),
        "num_warmup": len(run.requests) - len(measured),
        **catalogue.computed(view),  # the rows with their own formula (acceptance_length_per_draft, ...)
        **breakdowns.compute_breakdowns(*framed_requests(view), analysis),
        **(goodput.goodput(ok, slos) if slos else {}),
    }


def _run_counter_al(view: StepView) -> float | None:
    """Run-level counter AL = E / D_counters (only with run-level counters)."""
    if view.run_level is None:
        return None
    d = steps.counter_decode_steps(view.tokens, {"accepted": view.accepted} if view.accepted is not None else None)
    return view.tokens / d if d else None


def _al_by_category(
    requests: Sequence[RequestRecord], request_als: Sequence[tuple[RequestRecord, float]]
) -> dict[str, float | None]:
    """Mean request AL per category, from the same per-request ALs as the headline (None when
    only run-level counters decided, so no category shows a figure the headline contradicts)."""
    groups: dict[str, list[float | None]] = {r.category: [] for r in requests}
    for r, al in request_als:
        groups[r.category].append(al)
    return {cat: _mean(groups[cat]) for cat in sorted(groups)}


def _effective_step_latency(view: StepView) -> float | None:
    """Mean per-request (t_{n-1} - t_0) / D, D the reconciled decode steps: consistent with
    the headline AL whatever the event framing (AL / step latency = tokens per second)."""
    rows = _latency_rows(view)
    return _mean(s for _, s in rows)


def pooled_step_latency(view: StepView) -> float | None:
    """Pooled step latency = sum over requests of (t_{n-1} - t_0) / sum of D (reconciled decode
    steps): every decode step weighs the same, as in the server's own inter-token-latency
    histogram (sum / count), which it matches; the per-request mean (`step_latency_s.mean`)
    weighs each request the same instead, so short or slow requests move it (-0.9% against
    vLLM's pooled figure on a real run)."""
    decode = [request_decode_time(r) for r, c in view.per_request if c.decode_steps > 0]
    total = sum(d for d in decode if d is not None)
    if not view.decode_steps or not any(d is not None for d in decode):
        return None
    return total / view.decode_steps


def _latency_rows(view: StepView) -> list[tuple[float, float]]:
    """Paired per-request (AL, step latency) with the reconciled D; with run-level counters
    that overruled the chunks, chunk figures rescaled by chunk steps / D (same tokens)."""
    rows: list[tuple[float, float]] = []
    scale = 1.0
    if view.run_level is not None and view.run_level.source != SOURCE_CHUNKS and view.decode_steps:
        scale = sum(request_steps(r) for r, _ in view.per_request) / view.decode_steps
    for r, c in view.per_request:
        decode = request_decode_time(r)
        if decode is None or c.decode_steps <= 0:
            continue
        d = c.decode_steps / scale if scale != 1.0 else c.decode_steps
        rows.append((request_step_tokens(r) / d, decode / d))
    return rows
