"""Run metrics: docs/metrics.md's formulas on hand-computable and synthetic runs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_speedbench.metrics import request as R
from pytest_speedbench.metrics import run as M
from pytest_speedbench.metrics import speedup as S
from pytest_speedbench.metrics import steps as ST
from pytest_speedbench.measure.records import RequestRecord, RunRecords

# --- synthetic runs with known per-step acceptances -------------------------------------


def synthetic_request(
    accepts: list[int],
    *,
    gamma: int,
    framing: str = "steps",
    category: str = "qa",
    t_send: float = 0.0,
    ttft: float = 0.1,
    dt: float = 0.02,
    with_counters: bool = False,
    counters_style: str = "every_step",
    truncate: int = 0,
    prompt_id: str = "p",
) -> RequestRecord:
    """A request whose decode step s accepted `accepts[s]` draft tokens (so L = a + 1); -1 marks
    an undrafted step (L = 1). `truncate` tokens of the last step are cut off (max tokens) while
    the counters still count its accepted drafts, as vLLM and SGLang do.

    framing: "steps" = one event per step; "pairs" = two steps coalesced into one event;
    "tokens" = one event per token (within a step, tokens arrive together).
    counters_style: "every_step" (decode_steps and drafted_steps: SGLang, hf) or "drafted_only" (vLLM).
    """
    t0 = t_send + ttft
    step_times = [t0 + dt * (s + 1) for s in range(len(accepts))]
    lengths = [max(a, 0) + 1 for a in accepts]
    lengths[-1] -= truncate
    times, tokens = [t0], [1]
    if framing == "steps":
        times += step_times
        tokens += lengths
    elif framing == "pairs":
        for s in range(0, len(lengths), 2):
            times.append(step_times[min(s + 1, len(lengths) - 1)])
            tokens.append(sum(lengths[s : s + 2]))
    elif framing == "tokens":
        for t, k in zip(step_times, lengths):
            times += [t] * k
            tokens += [1] * k
    else:
        raise ValueError(framing)
    counters = None
    if with_counters:
        drafted = [a for a in accepts if a >= 0]
        counters = {
            "drafted_steps": len(drafted),
            "accepted": sum(drafted),
            "drafted": gamma * len(drafted),
            "accepted_per_pos": [sum(1 for a in drafted if a >= p) for p in range(1, gamma + 1)],
        }
        if counters_style == "every_step":
            counters["decode_steps"] = len(accepts)
    return RequestRecord(
        prompt_id=prompt_id,
        category=category,
        t_send=t_send,
        chunk_times=times,
        chunk_tokens=tokens,
        counters=counters,
    )


def synthetic_run(runs: list[list[int]], **kw) -> RunRecords:
    return RunRecords([synthetic_request(a, prompt_id=f"p{i}", **kw) for i, a in enumerate(runs)])


accept_lists = st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=12), min_size=1, max_size=8)


# --- per-request formulas ----------------------------------------------------------------

HAND = RequestRecord("a", "math", t_send=10.0, chunk_times=[10.5, 10.7, 10.8, 11.1], chunk_tokens=[1, 3, 2, 1])


def test_request_formulas_by_hand():
    # N = 7, L0 = 1, n = 4 -> 6 step tokens over 3 steps; decode window 11.1 - 10.5 = 0.6
    assert R.request_steps(HAND) == 3
    assert R.request_step_tokens(HAND) == 6
    assert R.request_al(HAND) == pytest.approx(2.0)
    assert R.request_ttft(HAND) == pytest.approx(0.5)
    assert R.request_step_latency(HAND) == pytest.approx(0.2)
    assert R.request_tpot(HAND) == pytest.approx(0.1)
    assert R.request_user_tps(HAND) == pytest.approx(10.0)
    assert R.request_e2e(HAND) == pytest.approx(1.1)


def test_single_chunk_request_has_no_steps():
    r = RequestRecord("b", "qa", t_send=0.0, chunk_times=[0.3], chunk_tokens=[5])
    assert R.request_steps(r) == 0
    assert R.request_al(r) is None
    assert R.request_step_latency(r) is None
    assert R.request_tpot(r) is None
    assert R.request_user_tps(r) is None
    assert R.request_ttft(r) == pytest.approx(0.3)
    assert R.request_e2e(r) == pytest.approx(0.3)


def test_counter_decode_steps_every_step_or_derived():
    """D from counters: the engine's decode_steps, else E - A (vLLM counts drafted steps only)."""
    assert ST.counter_decode_steps(23, {"decode_steps": 10, "accepted": 13}) == 10
    assert ST.counter_decode_steps(23, {"drafted_steps": 4, "accepted": 13}) == 10
    assert ST.counter_decode_steps(23, None) is None
    r = RequestRecord("v", "qa", chunk_times=[0.0] * 11, chunk_tokens=[1, 4, 1, 1, 3, 1, 1, 1, 4, 1, 6])
    r.counters = {"drafted_steps": 4, "accepted": 13}
    assert M.request_counter_al(r) == pytest.approx(23 / 10)


def test_per_draft_al_and_drafted_step_fraction_formulas():
    assert ST.per_draft_al(13, 4) == pytest.approx(1 + 13 / 4)
    assert ST.per_draft_al(0, 0) is None
    assert ST.drafted_step_fraction(4, 10) == pytest.approx(0.4)
    assert ST.drafted_step_fraction(0, 0) is None


# --- run metrics by hand ------------------------------------------------------------------


def hand_run() -> RunRecords:
    return RunRecords(
        [
            RequestRecord("w", "math", t_send=-5.0, chunk_times=[-4.0, -3.0], chunk_tokens=[1, 9], warmup=True),
            HAND,  # AL 2.0, lengths 3,2,1
            RequestRecord("b", "code", t_send=10.2, chunk_times=[10.4, 10.6], chunk_tokens=[1, 4]),  # AL 4
            RequestRecord("c", "code", t_send=10.1, chunk_times=[10.3], chunk_tokens=[2]),  # no step
            RequestRecord("d", "code", t_send=10.0, error="HTTP 500"),
            RequestRecord("e", "code", t_send=10.0),  # no token, no error
        ]
    )


def test_run_metrics_by_hand():
    m = M.compute_run_metrics(hand_run(), draft_length=3)
    assert m["num_requests"] == 3
    assert m["num_errors"] == 1
    assert m["num_empty"] == 1
    assert m["num_warmup"] == 1
    assert m["num_single_chunk_requests"] == 1
    assert m["num_output_tokens"] == 7 + 5 + 2
    assert m["num_steps"] == 4
    assert m["acceptance_length"] == pytest.approx(3.0)  # mean(2, 4); c has no step
    assert m["acceptance_length_pooled"] == pytest.approx(10 / 4)
    assert m["acceptance_length_all_chunks"] == pytest.approx(14 / 7)
    assert m["acceptance_length_by_category"] == {"code": pytest.approx(4.0), "math": pytest.approx(2.0)}
    assert m["al_histogram"] == {"1": 1, "2": 1, "3": 1, "4": 1}
    # lengths 3,2,1,4: >=1: 4, >=2: 3, >=3: 2, >=4: 1
    assert m["conditional_acceptance_rate"] == pytest.approx([3 / 4, 2 / 3, 1 / 2])
    assert m["al_source"] == "chunks"
    assert m["acceptance_length_counters"] is None
    # output TPS: 14 tokens over [first send 10.0, last arrival 11.1]; warmup/error/empty excluded
    assert m["output_tps"] == pytest.approx(14 / 1.1)
    assert m["ttft_s"]["mean"] == pytest.approx((0.5 + 0.2 + 0.2) / 3)
    assert m["e2e_s"]["p50"] == pytest.approx(0.4)  # e2e 1.1, 0.4, 0.2
    assert m["step_latency_s"]["mean"] == pytest.approx((0.2 + 0.2) / 2)
    assert m["step_latency_pooled_s"] == pytest.approx((0.6 + 0.2) / (3 + 1))  # decode time / steps
    assert m["tpot_s"]["mean"] == pytest.approx((0.1 + 0.05) / 2)
    assert m["user_tps"]["mean"] == pytest.approx((10.0 + 20.0) / 2)
    lo, hi = m["acceptance_length_ci95"]
    assert 2.0 <= lo <= 3.0 <= hi <= 4.0


def test_design_keys_present():
    m = M.compute_run_metrics(hand_run())
    m.update(S.empty_speedups())
    design_keys = (
        "acceptance_length acceptance_length_ci95 acceptance_length_pooled acceptance_length_all_chunks "
        "acceptance_length_by_category al_source al_histogram conditional_acceptance_rate ttft_s "
        "step_latency_s tpot_s e2e_s user_tps output_tps num_requests num_output_tokens "
        "speedup_user_tps speedup_output_tps speedup_analytical"
    ).split()
    assert set(design_keys) <= set(m)
    for key in ("ttft_s", "step_latency_s", "tpot_s", "e2e_s", "user_tps"):
        assert set(m[key]) == {"mean", "std", "p50", "p90", "p99"}


def test_gamma_defaults_to_longest_observed_draft():
    m = M.compute_run_metrics(synthetic_run([[0, 2, 1]], gamma=4))
    assert m["draft_length"] == 2
    assert len(m["conditional_acceptance_rate"]) == 2


def test_autoregressive_run_has_no_rates():
    m = M.compute_run_metrics(synthetic_run([[0] * 5, [0] * 3], gamma=0))
    assert m["acceptance_length"] == 1.0
    assert m["conditional_acceptance_rate"] == []
    assert m["al_histogram"] == {"1": 8}


def test_empty_run():
    m = M.compute_run_metrics(RunRecords([RequestRecord("x", "qa", error="timeout")]))
    assert m["num_requests"] == 0 and m["num_errors"] == 1
    assert m["acceptance_length"] is None and m["acceptance_length_ci95"] is None
    assert m["al_source"] is None
    assert m["output_tps"] is None
    assert m["ttft_s"]["mean"] is None


# --- synthetic runs: properties -------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(accept_lists)
def test_known_acceptances_give_exact_metrics(runs):
    gamma = 4
    m = M.compute_run_metrics(synthetic_run(runs, gamma=gamma), draft_length=gamma, n_boot=50)
    per_request = [sum(a + 1 for a in acc) / len(acc) for acc in runs]
    every = [a for acc in runs for a in acc]
    assert m["acceptance_length"] == pytest.approx(sum(per_request) / len(per_request))
    assert m["acceptance_length_pooled"] == pytest.approx(sum(a + 1 for a in every) / len(every))
    expected_hist = {str(k + 1): every.count(k) for k in sorted(set(every))}
    assert m["al_histogram"] == expected_hist
    for i, rate in enumerate(m["conditional_acceptance_rate"], start=1):
        reached = sum(1 for a in every if a >= i - 1)
        expected = sum(1 for a in every if a >= i) / reached if reached else None
        assert rate == pytest.approx(expected) if expected is not None else rate is None
    assert m["step_latency_s"]["mean"] == pytest.approx(0.02)
    assert m["ttft_s"]["mean"] == pytest.approx(0.1)


@settings(max_examples=60, deadline=None)
@given(accept_lists)
def test_pooled_between_request_extremes_and_histogram_counts_steps(runs):
    run = synthetic_run(runs, gamma=4)
    m = M.compute_run_metrics(run, n_boot=50)
    als = [R.request_al(r) for r in run.requests]
    assert min(als) - 1e-9 <= m["acceptance_length_pooled"] <= max(als) + 1e-9
    assert min(als) - 1e-9 <= m["acceptance_length"] <= max(als) + 1e-9
    assert sum(m["al_histogram"].values()) == m["num_steps"] == sum(len(a) for a in runs)
    # sum over k of k * count = tokens produced by steps
    assert sum(int(k) * v for k, v in m["al_histogram"].items()) == sum(R.request_step_tokens(r) for r in run.requests)
    assert all(r is None or 0.0 <= r <= 1.0 for r in m["conditional_acceptance_rate"])
    lo, hi = m["acceptance_length_ci95"]
    assert min(als) - 1e-9 <= lo <= hi <= max(als) + 1e-9


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 8), min_size=1, max_size=40), st.integers(0, 6))
def test_conditional_rates_bounded(lengths, gamma):
    rates = M.conditional_rates_from_lengths(lengths, gamma)
    assert len(rates) == gamma
    assert all(r is None or 0.0 <= r <= 1.0 for r in rates)


def test_conditional_rates_from_counters_by_hand():
    # 10 steps; 6 accepted pos 1, 3 accepted pos 2, 0 at pos 3
    assert M.conditional_rates_from_counters(10, [6, 3, 0], 4) == [0.6, 0.5, 0.0, None]
    assert M.conditional_rates_from_counters(10, [0, 0], 2) == [0.0, None]


# --- where decode steps come from: one test per al_source_reason ------------------------------


def test_reason_no_engine_counters():
    assert ST.reconcile_steps(10, 6, None, gamma=3) == ST.StepCount(6, "chunks", "no_engine_counters")


def test_reason_chunks_are_steps():
    # SGLang-like: every step counted and drafted; chunks agree
    assert ST.reconcile_steps(10, 6, {"decode_steps": 6, "drafted_steps": 6, "accepted": 4}, gamma=3) == \
        ST.StepCount(6, "chunks", "chunks_are_steps")


def test_reason_counters_cover_drafted_steps_only():
    # vLLM ngram: 2 drafted steps of 6; D = E - A = 10 - 4 = 6 agrees with the chunks
    assert ST.reconcile_steps(10, 6, {"drafted_steps": 2, "accepted": 4}, gamma=3) == \
        ST.StepCount(6, "chunks", "counters_cover_drafted_steps_only")


def test_reason_end_of_request_truncation():
    # the last step accepted 3 but max tokens kept 1 of its 4 tokens: E - A = 5 < 7 chunk steps
    assert ST.reconcile_steps(10, 7, {"drafted_steps": 3, "accepted": 5}, gamma=3) == \
        ST.StepCount(7, "chunks", "end_of_request_truncation")
    # more than gamma short is not truncation: the events are finer than steps
    assert ST.reconcile_steps(10, 10, {"drafted_steps": 3, "accepted": 5}, gamma=3).reason == "one_token_per_event"


def test_reason_coalesced_events():
    assert ST.reconcile_steps(10, 4, {"drafted_steps": 2, "accepted": 4}, gamma=3) == \
        ST.StepCount(6, "engine_counters", "coalesced_events")
    assert ST.reconcile_steps(10, 4, {"decode_steps": 6, "accepted": 4}, gamma=3).reason == "coalesced_events"


def test_reason_one_token_per_event():
    # llama.cpp-like: 10 one-token events, the engine counted 6 decode steps
    assert ST.reconcile_steps(10, 10, {"decode_steps": 6, "accepted": 4}, gamma=3) == \
        ST.StepCount(6, "engine_counters", "one_token_per_event")
    # vLLM-like counters on a stream that never carried > 1 token per event: not truncation
    counters = {"drafted_steps": 3, "accepted": 3}
    assert ST.reconcile_steps(10, 10, counters, gamma=3, step_framed=False).reason == "one_token_per_event"
    assert ST.reconcile_steps(10, 10, counters, gamma=3, step_framed=True).reason == "end_of_request_truncation"


def test_run_reason_is_the_most_telling_present():
    assert ST.run_reason(["chunks_are_steps", "coalesced_events", "end_of_request_truncation"]) == "coalesced_events"
    assert ST.run_reason([]) is None
    assert set(ST.REASONS) == set(ST.REASON_TEXT)


RUNS = [[2, 3, 0, 1, 3], [1, 1, 0, 2], [3, 3, 3], [0, 2, 1, 1, 0, 3]]


def true_metrics():
    return M.compute_run_metrics(synthetic_run(RUNS, gamma=3), draft_length=3)


def test_coalesced_events_counters_win():
    truth = true_metrics()
    m = M.compute_run_metrics(synthetic_run(RUNS, gamma=3, framing="pairs", with_counters=True), draft_length=3)
    assert m["acceptance_length_chunks"] > 1.5 * truth["acceptance_length"]  # two steps per event
    assert m["al_source"] == "engine_counters"
    assert m["al_source_reason"] == "coalesced_events"
    assert m["acceptance_length"] == pytest.approx(truth["acceptance_length"])
    assert m["acceptance_length_counters"] == pytest.approx(truth["acceptance_length"])
    assert m["acceptance_length_pooled"] == pytest.approx(truth["acceptance_length_pooled"])
    assert m["acceptance_length_by_category"] == pytest.approx(truth["acceptance_length_by_category"])
    assert m["conditional_acceptance_source"] == "engine_counters"
    assert m["conditional_acceptance_rate"] == pytest.approx(truth["conditional_acceptance_rate"])
    # step latency consistent with the counter AL: the true 20 ms per step
    # (the events alone suggest two steps' time per step: the reconciled D is used instead)
    assert m["step_latency_effective_mean_s"] == pytest.approx(0.02)
    assert m["step_latency_s"]["mean"] == pytest.approx(0.02) and m["step_latency_pooled_s"] == pytest.approx(0.02)
    assert m["acceptance_length_ci95"] == pytest.approx(truth["acceptance_length_ci95"])


def test_one_token_per_event_counters_win():
    truth = true_metrics()
    m = M.compute_run_metrics(synthetic_run(RUNS, gamma=3, framing="tokens", with_counters=True), draft_length=3)
    assert m["acceptance_length_chunks"] == pytest.approx(1.0)
    assert m["al_source"] == "engine_counters"
    assert m["al_source_reason"] == "one_token_per_event"
    assert m["acceptance_length"] == pytest.approx(truth["acceptance_length"])
    assert m["step_latency_effective_mean_s"] == pytest.approx(0.02)


def test_agreeing_counters_keep_chunks():
    m = M.compute_run_metrics(synthetic_run(RUNS, gamma=3, with_counters=True), draft_length=3)
    assert m["al_source"] == "chunks" and m["al_source_reason"] == "chunks_are_steps"
    assert m["acceptance_length_counters"] == pytest.approx(m["acceptance_length_chunks"])
    assert m["conditional_acceptance_source"] == "chunks"


# vLLM ngram: -1 = no n-gram match (undrafted step); every request ends 2 tokens short of its last step
VLLM_RUNS = [[-1, 2, -1, -1, 3, 0, -1, 3], [-1, -1, 1, -1, 2], [3, -1, -1, 3], [-1, 0, -1, 2, -1, 3]]


def vllm_run(**kw) -> RunRecords:
    return synthetic_run(VLLM_RUNS, gamma=3, with_counters=True, counters_style="drafted_only", truncate=2, **kw)


def test_vllm_like_counters_give_tokens_per_decode_step_and_the_engines_per_draft_al():
    m = M.compute_run_metrics(vllm_run(), draft_length=3)
    every = [a for acc in VLLM_RUNS for a in acc]
    drafted = [a for a in every if a >= 0]
    emitted = sum(max(a, 0) + 1 for a in every) - 2 * len(VLLM_RUNS)
    assert m["num_decode_steps"] == len(every) and m["num_drafted_steps"] == len(drafted)
    assert m["acceptance_length_pooled"] == pytest.approx(emitted / len(every))  # tokens per decode step
    assert m["acceptance_length_per_draft"] == pytest.approx(1 + sum(drafted) / len(drafted))  # vLLM's own
    assert m["drafted_step_fraction"] == pytest.approx(len(drafted) / len(every))
    assert m["al_source"] == "chunks" and m["al_source_reason"] == "end_of_request_truncation"
    # conditional acceptance over drafted steps (chunks, the AL's source: emitted tokens):
    # position 1 = steps that emitted >= 2 tokens / drafted steps, not / decode steps
    emitted_lengths = [L for r in vllm_run().requests for L in r.chunk_tokens[1:]]
    assert m["conditional_acceptance_rate"][0] == pytest.approx(
        sum(1 for L in emitted_lengths if L >= 2) / len(drafted))
    assert m["conditional_acceptance_basis"] == "drafted steps"


def test_vllm_like_counters_without_truncation_say_drafted_steps_only():
    run = synthetic_run(VLLM_RUNS, gamma=3, with_counters=True, counters_style="drafted_only")
    m = M.compute_run_metrics(run, draft_length=3)
    assert m["al_source_reason"] == "counters_cover_drafted_steps_only"
    assert m["acceptance_length_counters"] == pytest.approx(m["acceptance_length_chunks"])


def test_overall_al_lies_within_its_categories_whatever_the_source():
    """The issue's report: an 'overall' AL above every category. Headline and categories now
    come from the same per-request decode steps, for chunks and for counters alike."""
    for framing in ("steps", "pairs", "tokens"):
        run = vllm_run(framing=framing)
        for i, r in enumerate(run.requests):
            r.category = ("code", "math")[i % 2]
        m = M.compute_run_metrics(run, draft_length=3)
        cats = [v for v in m["acceptance_length_by_category"].values() if v is not None]
        assert len(cats) == 2
        assert min(cats) - 1e-12 <= m["acceptance_length"] <= max(cats) + 1e-12, (framing, m)
        assert m["acceptance_length_by_category_source"] == m["al_source"]


def test_run_level_counters():
    truth = true_metrics()
    run = synthetic_run(RUNS, gamma=3, framing="pairs")
    every = [a for acc in RUNS for a in acc]
    run.engine_counters = {"drafted_steps": len(every), "accepted": sum(every)}
    m = M.compute_run_metrics(run, draft_length=3)
    assert m["al_source"] == "engine_counters" and m["al_source_reason"] == "coalesced_events"
    assert m["acceptance_length"] == pytest.approx(truth["acceptance_length_pooled"])  # pooled only
    assert m["acceptance_length_ci95"] is None  # no per-request values to resample
    assert set(m["acceptance_length_by_category"].values()) == {None}  # none that contradicts the headline
    assert m["acceptance_length_per_draft"] == pytest.approx(1 + sum(every) / len(every))
    # no accepted_per_pos and coalesced events: no histogram or rates rather than chunk ones that
    # contradict the counter AL
    assert m["al_histogram"] == {} and m["al_histogram_source"] is None
    assert m["conditional_acceptance_rate"] == [None] * 3 and m["conditional_acceptance_source"] is None
    assert "no per-step breakdown" in m["al_histogram_source_reason"]
    assert m["step_latency_effective_mean_s"] == pytest.approx(m["step_latency_s"]["mean"])
    chunk_mean = sum(R.request_step_latency(r) for r in run.requests) / len(run.requests)
    assert m["step_latency_s"]["mean"] == pytest.approx(chunk_mean * m["num_steps"] / m["num_decode_steps"])


def test_run_level_counters_that_agree_keep_per_request_chunks():
    run = vllm_run()
    for r in run.requests:
        r.counters = None
    drafted = [a for acc in VLLM_RUNS for a in acc if a >= 0]
    run.engine_counters = {"drafted_steps": len(drafted), "accepted": sum(drafted)}
    m = M.compute_run_metrics(run, draft_length=3)
    assert m["al_source"] == "chunks" and m["al_source_reason"] == "end_of_request_truncation"
    assert m["acceptance_length"] == pytest.approx(m["acceptance_length_chunks"])
    assert m["acceptance_length_ci95"] is not None


def _hist_mean(hist: dict[str, int]) -> float:
    return sum(int(k) * v for k, v in hist.items()) / sum(hist.values())


def test_coalesced_events_histogram_from_per_position_counters():
    truth = true_metrics()
    m = M.compute_run_metrics(synthetic_run(RUNS, gamma=3, framing="pairs", with_counters=True), draft_length=3)
    assert m["al_histogram_source"] == "engine_counters"
    assert m["al_histogram"] == truth["al_histogram"]
    assert m["al_histogram_chunks"] != truth["al_histogram"]  # what the events alone suggest


def test_one_token_per_event_without_per_position_counters_uses_bursts():
    """llama-server: one token per event, counters give only steps and accepted per request.
    Tokens of one step arrive within microseconds (jittered here), steps 20 ms apart."""
    truth = true_metrics()
    run = synthetic_run(RUNS, gamma=3, framing="tokens", with_counters=True)
    rng = np.random.default_rng(3)
    for r in run.requests:
        del r.counters["accepted_per_pos"], r.counters["drafted"]
        r.chunk_times = [t + j * 1e-5 + rng.uniform(0, 1e-5) for j, t in enumerate(r.chunk_times)]
    m = M.compute_run_metrics(run, draft_length=3)
    assert m["al_source"] == "engine_counters"
    assert set(m["al_histogram_chunks"]) == {"1"}  # what the events alone suggest
    assert m["al_histogram_source"] == "engine_counters+bursts"
    assert "unambiguous" in m["al_histogram_source_reason"]
    assert m["al_histogram"] == truth["al_histogram"]
    assert m["conditional_acceptance_rate"] == pytest.approx(truth["conditional_acceptance_rate"])
    assert _hist_mean(m["al_histogram"]) == pytest.approx(m["acceptance_length_pooled"])


@given(accepts=st.lists(st.integers(0, 4), min_size=1, max_size=12),
       gaps=st.lists(st.floats(0.0, 1.0), min_size=60, max_size=60))
def test_burst_split_always_matches_the_counter_step_count(accepts, gaps):
    """Whatever the arrival times, the split has the engine's step count and the emitted tokens,
    so the histogram's mean is the counter AL."""
    tokens = sum(a + 1 for a in accepts)
    times = list(np.cumsum([0.1, *gaps[:tokens]]))
    r = RequestRecord("p", "qa", chunk_times=times, chunk_tokens=[1] * (tokens + 1))
    lengths, separation = M.burst_step_lengths(r, len(accepts))
    assert len(lengths) == len(accepts) and sum(lengths) == tokens and min(lengths) >= 1
    assert separation >= 0
    assert M.burst_step_lengths(r, tokens + 1) is None  # more steps than decode events


# --- speedups ---------------------------------------------------------------------------------


def test_empty_speedups_keys():
    e = S.empty_speedups()
    for key in S.SPEEDUP_KEYS:
        assert e[key] is None and e[f"{key}_ci95"] is None


def test_speedups_by_hand():
    # AR: 1 token per 10 ms step. SD: AL 3 (accept 2 every step), 15 ms per step.
    ar = synthetic_run([[0] * 30] * 4, gamma=0, dt=0.010, ttft=0.05)
    sd = synthetic_run([[2] * 10] * 4, gamma=2, dt=0.015, ttft=0.05)
    ar_m, sd_m = M.compute_run_metrics(ar), M.compute_run_metrics(sd)
    s = S.compute_speedups(sd, ar, sd_m, ar_m)
    # user TPS: SD 30 tok / 0.15 s = 200, AR 30 / 0.30 = 100
    assert s["speedup_user_tps"] == pytest.approx(2.0)
    assert s["speedup_user_tps_ci95"] == pytest.approx([2.0, 2.0])
    # output TPS: 31 tokens / 0.2 s vs 31 / 0.35 s per request, run concurrently
    assert s["speedup_output_tps"] == pytest.approx(0.35 / 0.2)
    assert s["speedup_output_tps_ci95"] == pytest.approx([0.35 / 0.2] * 2)
    # analytical: 10 ms x 3 / 15 ms
    assert s["speedup_analytical"] == pytest.approx(2.0)
    assert s["speedup_analytical_ci95"] == pytest.approx([2.0, 2.0])
    assert s["speedup_analytical_inputs"]["sd_acceptance_length"] == pytest.approx(3.0)


@pytest.mark.parametrize("ar_framing", ["steps", "pairs"])
def test_analytical_speedup_independent_of_event_framing(ar_framing):
    # an AR server that streams every other token ("pairs") still takes 10 ms per step
    ar = synthetic_run([[0] * 12] * 3, gamma=0, dt=0.010, framing=ar_framing)
    ar_m = M.compute_run_metrics(ar)
    by_framing = {}
    for framing in ("steps", "pairs", "tokens"):
        sd = synthetic_run(RUNS, gamma=3, dt=0.016, framing=framing, with_counters=True)
        sd_m = M.compute_run_metrics(sd, draft_length=3)
        by_framing[framing] = S.compute_speedups(sd, ar, sd_m, ar_m)["speedup_analytical"]
    expected = 0.010 * true_metrics()["acceptance_length"] / 0.016
    assert by_framing == pytest.approx({"steps": expected, "pairs": expected, "tokens": expected})


def test_speedup_cis_bracket_noisy_estimates():
    import numpy as np

    rng = np.random.default_rng(7)
    ar = synthetic_run([[0] * 20] * 30, gamma=0, dt=0.01)
    for r in ar.requests:  # jitter AR step times
        r.chunk_times = [r.chunk_times[0]] + [t + rng.uniform(0, 0.005) for t in r.chunk_times[1:]]
        r.chunk_times = sorted(r.chunk_times)
    sd_runs = [list(rng.integers(0, 4, size=8)) for _ in range(30)]
    sd = synthetic_run(sd_runs, gamma=3, dt=0.015)
    ar_m, sd_m = M.compute_run_metrics(ar), M.compute_run_metrics(sd)
    s = S.compute_speedups(sd, ar, sd_m, ar_m, seed=3)
    for key in S.SPEEDUP_KEYS:
        lo, hi = s[f"{key}_ci95"]
        assert lo <= s[key] <= hi, key
        assert hi > lo, key


def test_pooled_step_latency_weighs_every_step_not_every_request():
    """Pooled = total decode time / total decode steps (the server's own sum / count); the
    per-request mean weighs a short request as much as a long one."""
    short = RequestRecord("a", "x", t_send=0.0, chunk_times=[0.1, 0.2], chunk_tokens=[1, 1])  # 1 step, 100 ms
    long = RequestRecord("b", "x", t_send=0.0, chunk_times=[0.1 + 0.01 * k for k in range(10)],
                         chunk_tokens=[1] * 10)  # 9 steps, 10 ms each
    m = M.compute_run_metrics(RunRecords([short, long]))
    assert m["step_latency_pooled_s"] == pytest.approx((0.1 + 0.09) / 10)
    assert m["step_latency_s"]["mean"] == pytest.approx((0.1 + 0.01) / 2)


def test_hidden_cut_steps_only_where_the_counters_were_derived_and_the_chunks_could_not_show_the_cut():
    derived = {"drafted_steps": 3, "accepted": 5}
    assert ST.hidden_cut_steps(20, 15, derived, gamma=3) == 3  # chunks = E - A: merges may equal the cut
    assert ST.hidden_cut_steps(20, 12, derived, gamma=3) == 3  # coalesced
    assert ST.hidden_cut_steps(20, 12, {"drafted_steps": 3, "accepted": 2}, gamma=3) == 2  # at most A
    assert ST.hidden_cut_steps(20, 17, derived, gamma=3) == 0  # chunks above E - A: truncation seen
    assert ST.hidden_cut_steps(20, 12, {"decode_steps": 15, "accepted": 5}, gamma=3) == 0  # engine counts steps
    assert ST.hidden_cut_steps(20, 12, None, gamma=3) == 0


def test_assign_server_steps_fills_the_coalesced_requests_first_within_their_bounds():
    c = ST.StepCount
    counts = [c(10, "chunks", "chunks_are_steps"), c(8, "engine_counters", "coalesced_events"),
              c(9, "engine_counters", "coalesced_events")]
    hidden, last = [3, 3, 3], [1, 2, 1]
    out, residual = ST.assign_server_steps(counts, hidden, last, 27 + 4)
    assert residual == 4
    # coalesced first, the shortest last event first: request 2 takes 3, request 1 the last one
    assert [x.decode_steps for x in out] == [10, 9, 12] and out[0] == counts[0]
    assert sum(x.decode_steps for x in out) == 31
    assert ST.assign_server_steps(counts, hidden, last, 27) == (counts, 0)  # nothing missing
    assert ST.assign_server_steps(counts, hidden, last, 27 + 10) == (counts, 10)  # out of reach: unchanged
    assert ST.assign_server_steps(counts, hidden, last, 26) == (counts, -1)  # fewer than the chunks: unchanged


def test_events_that_are_the_engines_steps_hide_no_cut():
    per_pos = [3, 1, 0]  # 3 drafted steps accepted >= 1, one of them >= 2
    assert ST.framing_matches_counters([1, 2, 1, 3, 2, 1], per_pos)
    assert not ST.framing_matches_counters([1, 2, 1, 3, 3], per_pos)  # two 1-token steps merged
    assert not ST.framing_matches_counters([1, 2, 1, 2, 2, 1], per_pos)  # the 3-token step was cut
    assert not ST.framing_matches_counters([1, 2, 5], per_pos)  # longer than any step
    counters = {"drafted_steps": 4, "accepted": 4, "accepted_per_pos": per_pos}
    assert ST.hidden_cut_steps(10, 6, counters, gamma=3, step_lengths=[1, 2, 1, 3, 2, 1]) == 0
    assert ST.hidden_cut_steps(10, 6, counters, gamma=3, step_lengths=[1, 2, 1, 2, 3, 1]) == 0
    assert ST.hidden_cut_steps(10, 6, counters, gamma=3, step_lengths=[2, 2, 1, 2, 2, 1]) == 3
