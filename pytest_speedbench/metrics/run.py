"""Run metrics from request records: pure functions, no I/O, no HTTP (DESIGN.md "Metric definitions").

Per-request formulas live in request.py, speedups in speedup.py, the list of metrics in catalogue.py.

For one request turn: send time t_s; chunks j = 0..n-1 arriving at t_j carrying L_j tokens;
N = sum L_j. Chunk 0 is prefill's output, so verification steps are chunks 1..n-1.

Streamed chunks are only a proxy for verification steps: a server may coalesce several steps
into one event or stream one token per event. Engine SD counters (normalized to
{steps, accepted, drafted?, accepted_per_pos?}, see records.py) measure steps directly, so
when both exist and disagree by more than 2% the counters are authoritative and the result
says which source was used and why.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pytest_speedbench.metrics import catalogue, stats
from pytest_speedbench.metrics.request import (
    counter_al,
    counter_steps,
    request_al,
    request_counter_step_latency,
    request_e2e,
    request_step_latency,
    request_steps,
    request_tpot,
    request_ttft,
    request_user_tps,
)
from pytest_speedbench.measure.records import Counters, RequestRecord, RunRecords

AGREEMENT_TOLERANCE = 0.02  # relative chunk-vs-counter AL difference tolerated
SOURCE_CHUNKS = "chunks"
SOURCE_COUNTERS = "engine_counters"
SOURCE_BURSTS = "engine_counters+bursts"  # counter step count, step lengths from event bursts


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


def conditional_rates_from_lengths(lengths: Sequence[int], gamma: int) -> list[float | None]:
    """Rate at draft position i = 1..gamma: steps with L >= i+1 / steps with L >= i."""
    arr = np.asarray(lengths, dtype=int)
    rates: list[float | None] = []
    for i in range(1, gamma + 1):
        reached = int((arr >= i).sum())
        rates.append(int((arr >= i + 1).sum()) / reached if reached else None)
    return rates


def conditional_rates_from_counters(steps: int, accepted_per_pos: Sequence[float], gamma: int) -> list[float | None]:
    """Position 1: acc[0] / steps; position i: acc[i-1] / acc[i-2]; None where unknown."""
    rates: list[float | None] = []
    for i in range(1, gamma + 1):
        if i > len(accepted_per_pos):
            rates.append(None)
            continue
        den = steps if i == 1 else accepted_per_pos[i - 2]
        rates.append(float(accepted_per_pos[i - 1]) / den if den else None)
    return rates


def histogram_from_per_pos(steps: int, accepted_per_pos: Sequence[float]) -> dict[str, int]:
    """Exact step histogram from counters: with c_i = steps accepting >= i drafts (c_0 = steps),
    steps emitting k tokens = c_{k-1} - c_k (k = 1..gamma) and c_gamma (k = gamma + 1).

    Its mean is (steps + sum c_i) / steps = counter AL, so plots built on it agree with the table.
    """
    reached = [float(steps), *(float(c) for c in accepted_per_pos)]
    counts = {k: reached[k - 1] - (reached[k] if k < len(reached) else 0.0) for k in range(1, len(reached) + 1)}
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


def authoritative_step_histogram(
    requests: Sequence[RequestRecord], view: "CounterView", use_counters: bool, lengths: Sequence[int]
) -> tuple[dict[str, int], list[int] | None, str | None, str]:
    """The step histogram from the same source as the AL: (histogram, step lengths or None,
    source, reason). Chunks when chunks are authoritative; else counters' per-position counts
    (exact); else one-token-per-event bursts cut to the counter step count; else none, rather
    than a chunk histogram that contradicts the counter AL the table shows.
    """
    if not use_counters:
        return al_histogram(lengths), list(lengths), SOURCE_CHUNKS, "step lengths from streamed chunks"
    if view.accepted_per_pos is not None and view.steps > 0:
        return (histogram_from_per_pos(view.steps, view.accepted_per_pos), None, SOURCE_COUNTERS,
                "engine per-position accepted counts")
    if view.has_per_request and all(all(k == 1 for k in r.chunk_tokens[1:]) for r, _ in view.per_request):
        split = [burst_step_lengths(r, counter_steps(r.counters)) for r, _ in view.per_request]
        if all(s is not None for s in split):
            burst_lengths = [k for s in split for k in s[0]]  # type: ignore[index]
            separation = min(s[1] for s in split)  # type: ignore[index]
            clear = "unambiguous" if separation > 1 else "ambiguous in places"
            return (al_histogram(burst_lengths), burst_lengths, SOURCE_BURSTS,
                    f"one token per event: tokens grouped into the engine's step count at the largest arrival "
                    f"gaps (bursts {clear}, separation {separation:.3g})")
    return {}, None, None, "engine counters are authoritative but give no per-step breakdown"


def output_tps(requests: Sequence[RequestRecord]) -> float | None:
    """Total tokens / (last arrival - first send) of `requests` (the measured window)."""
    if not requests:
        return None
    window = max(r.chunk_times[-1] for r in requests) - min(r.t_send for r in requests)
    return sum(r.num_tokens for r in requests) / window if window > 0 else None


def choose_al_source(chunk_al: float | None, counter_al: float | None) -> tuple[str | None, str]:
    """Which AL is authoritative, and why (the chunk-vs-counter rule)."""
    if counter_al is None:
        if chunk_al is None:
            return None, "no request had a verification step and the engine reported no SD counters"
        return SOURCE_CHUNKS, "no engine SD counters; AL from streamed chunks"
    if chunk_al is None:
        return SOURCE_COUNTERS, "no request streamed a verification step; AL from engine counters"
    pair = f"chunk AL {chunk_al:.2f} vs counter AL {counter_al:.2f}"
    if abs(chunk_al - counter_al) <= AGREEMENT_TOLERANCE * counter_al:
        return SOURCE_CHUNKS, f"{pair}: agree within {AGREEMENT_TOLERANCE:.0%}"
    if chunk_al <= 1.0 + AGREEMENT_TOLERANCE and counter_al > chunk_al:
        why = "the server streams one token per event"
    elif chunk_al > counter_al:
        why = "the server coalesced steps into one event"
    else:
        why = "the server split steps over several events"
    return SOURCE_COUNTERS, f"{pair}: {why}"


@dataclass(frozen=True, slots=True)
class CounterView:
    """Engine counters over the measured requests: per request when the engine gives them."""

    per_request: list[tuple[RequestRecord, float]]  # (request, counter AL), steps > 0 only
    al: float | None  # mean of per-request counter ALs, else run-level pooled
    pooled: float | None
    steps: int
    accepted_per_pos: list[float] | None

    @property
    def has_per_request(self) -> bool:
        return bool(self.per_request)


def counter_view(requests: Sequence[RequestRecord], run_counters: Counters | None) -> CounterView:
    """Collect per-request counters, falling back to run-level ones."""
    with_counters = [r for r in requests if counter_steps(r.counters) > 0]
    if with_counters:
        per_request = [(r, counter_al(r.counters)) for r in with_counters]
        steps = sum(counter_steps(r.counters) for r in with_counters)
        accepted = sum(float(r.counters.get("accepted") or 0) for r in with_counters)
        per_pos = _sum_positions([r.counters.get("accepted_per_pos") for r in with_counters])
        return CounterView(per_request, _mean(al for _, al in per_request), (steps + accepted) / steps, steps, per_pos)
    al = counter_al(run_counters)
    per_pos = run_counters.get("accepted_per_pos") if run_counters and al is not None else None
    return CounterView([], al, al, counter_steps(run_counters), list(per_pos) if per_pos else None)


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


def compute_run_metrics(
    run: RunRecords, *, draft_length: int | None = None, seed: int = 0, n_boot: int = 1000
) -> dict[str, Any]:
    """DESIGN.md's `extra_info` metrics (speedups and gate excluded) for one run.

    Warmup requests are ignored; requests with an error (or without any token) are excluded
    and counted. `draft_length` fixes gamma for the conditional acceptance rates; without it
    gamma is the longest observed draft (max L - 1, or the counters' position count).
    """
    measured = run.measured
    ok = [r for r in measured if r.ok]
    chunk_als = [a for a in (request_al(r) for r in ok) if a is not None]
    lengths = step_lengths(ok)
    chunk_al = _mean(chunk_als)
    view = counter_view(ok, run.engine_counters)
    source, reason = choose_al_source(chunk_al, view.al)
    use_counters = source == SOURCE_COUNTERS

    if use_counters:
        al, pooled = view.al, view.pooled
        per_request_als = [a for _, a in view.per_request] if view.has_per_request else []
    else:
        al, per_request_als = chunk_al, chunk_als
        pooled = sum(lengths) / len(lengths) if lengths else None

    histogram, hist_lengths, hist_source, hist_reason = authoritative_step_histogram(ok, view, use_counters, lengths)
    rates_from_counters = use_counters and view.accepted_per_pos is not None
    if draft_length is not None:
        gamma = draft_length
    elif rates_from_counters:
        gamma = len(view.accepted_per_pos)
    else:
        gamma = max(max(hist_lengths) - 1, 0) if hist_lengths else 0
    if rates_from_counters:
        rates = conditional_rates_from_counters(view.steps, view.accepted_per_pos, gamma)
        rates_source = SOURCE_COUNTERS
    elif hist_lengths is not None:
        rates = conditional_rates_from_lengths(hist_lengths, gamma)
        rates_source = hist_source
    else:
        rates, rates_source = [None] * gamma, None

    all_chunks = [k for r in ok for k in r.chunk_tokens]
    by_category, category_source = _al_by_category(ok, view if use_counters and view.has_per_request else None)
    return {
        "acceptance_length": al,
        "acceptance_length_ci95": stats.bootstrap_ci(per_request_als, n_boot=n_boot, seed=seed)
        if per_request_als
        else None,
        "acceptance_length_pooled": pooled,
        "acceptance_length_all_chunks": float(np.mean(all_chunks)) if all_chunks else None,
        "acceptance_length_by_category": by_category,
        "acceptance_length_by_category_source": category_source,
        "acceptance_length_chunks": chunk_al,
        "acceptance_length_counters": view.al,
        "al_source": source,
        "al_source_reason": reason,
        "al_histogram": histogram,
        "al_histogram_source": hist_source,
        "al_histogram_source_reason": hist_reason,
        "al_histogram_chunks": al_histogram(lengths),
        "conditional_acceptance_rate": rates,
        "conditional_acceptance_source": rates_source,
        "draft_length": gamma,
        "ttft_s": stats.summarize([request_ttft(r) for r in ok]),
        "step_latency_s": stats.summarize([request_step_latency(r) for r in ok]),
        "step_latency_effective_mean_s": _effective_step_latency(ok, source, view, chunk_al),
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
        **catalogue.computed(ok),
    }


def _al_by_category(
    requests: Sequence[RequestRecord], view: CounterView | None
) -> tuple[dict[str, float | None], str]:
    """Mean request AL per category, from per-request counters when those are authoritative."""
    if view is not None:
        pairs: Iterable[tuple[RequestRecord, float | None]] = view.per_request
        source = SOURCE_COUNTERS
    else:
        pairs = ((r, request_al(r)) for r in requests)
        source = SOURCE_CHUNKS
    groups: dict[str, list[float | None]] = {r.category: [] for r in requests}
    for r, al in pairs:
        groups[r.category].append(al)
    return {cat: _mean(groups[cat]) for cat in sorted(groups)}, source


def _effective_step_latency(
    requests: Sequence[RequestRecord], source: str | None, view: CounterView, chunk_al: float | None
) -> float | None:
    """Mean step latency consistent with the authoritative AL.

    With chunks it is the chunk step latency. With counters a "step" in the stream is not a
    verification step: per-request counters give (t_{n-1} - t_0) / steps directly; run-level
    counters rescale the chunk step latency by counter AL / chunk AL (same tokens, fewer or
    more steps). Keeps AL / step latency = tokens per second whatever the event framing.
    """
    chunk_mean = _mean(request_step_latency(r) for r in requests)
    if source != SOURCE_COUNTERS:
        return chunk_mean
    if view.has_per_request:
        return _mean(request_counter_step_latency(r) for r, _ in view.per_request)
    if chunk_mean is None or not chunk_al or view.al is None:
        return None
    return chunk_mean * view.al / chunk_al
