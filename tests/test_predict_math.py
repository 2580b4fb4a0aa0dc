"""Speedup prediction: step-latency curves, category-mix AL, bands and leave-one-out."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_speedbench.analysis.predict import (
    LatencyPoint, Observation, PredictionError, fit_inputs, fit_line, leave_one_out, mix_acceptance_length,
    predict_from, predict_speedup, step_latency_at,
)

T_AR = {1: (0.010, 2e-6), 4: (0.020, 6e-6)}  # batch -> (intercept s, slope s/token)
T_SD = {1: (0.014, 3e-6), 4: (0.030, 9e-6)}
AL = {"coding": 2.6, "writing": 1.6, "low_entropy": 2.8, "high_entropy": 1.4}


def latencies(truth: float, n: int, rng: np.random.Generator, rel: float = 0.03) -> tuple[float, ...]:
    return tuple(truth * rng.normal(1.0, rel, n))


def curve_points(model: dict[int, tuple[float, float]], isls, rng, n: int = 12) -> list[LatencyPoint]:
    return [LatencyPoint(x, b, latencies(a + c * x, n, rng)) for b, (a, c) in model.items() for x in isls]


def test_fit_line_is_ols_and_vectorized() -> None:
    x = np.array([100.0, 1000.0, 2000.0, 8000.0])
    rng = np.random.default_rng(0)
    y = rng.normal(size=(5, 4)) + 0.5 + 0.001 * x
    a, c = fit_line(x, y)
    for i in range(5):
        slope, intercept = np.polyfit(x, y[i], 1)
        assert a[i] == pytest.approx(intercept) and c[i] == pytest.approx(slope)
    a1, c1 = fit_line(np.array([7.0, 7.0]), np.array([1.0, 3.0]))
    assert float(a1) == 2.0 and float(c1) == 0.0


def test_step_latency_interpolates_isl_and_batch_size() -> None:
    rng = np.random.default_rng(1)
    points = curve_points(T_AR, (100, 1000, 2000), rng, n=40)
    est = step_latency_at(points, 1500, 1, n_boot=500)
    truth = 0.010 + 2e-6 * 1500
    assert est.value == pytest.approx(truth, rel=0.02)
    assert est.band[0] <= truth <= est.band[1]
    mid = step_latency_at(points, 1500, 2, n_boot=500)
    expected = truth + (2 - 1) / 3 * ((0.020 + 6e-6 * 1500) - truth)
    assert mid.value == pytest.approx(expected, rel=0.02)
    assert any("interpolated between 1 and 4" in n for n in mid.notes)


def test_step_latency_refuses_unmeasured_batch_sizes_and_flags_extrapolation() -> None:
    points = curve_points(T_AR, (1000, 2000), np.random.default_rng(2))
    with pytest.raises(PredictionError, match=r"batch size 8 is outside the measured batch sizes 1, 4"):
        step_latency_at(points, 1500, 8)
    far = step_latency_at(points, 16000, 1, n_boot=200)
    assert any("extrapolated" in n for n in far.notes)
    flat = step_latency_at([p for p in points if p.isl == 1000], 3000, 1, n_boot=200)
    assert any("assumed flat" in n for n in flat.notes)


def test_residual_noise_widens_the_band_when_the_curve_bends() -> None:
    rng = np.random.default_rng(3)
    xs = (100, 1000, 2000, 4000)
    straight = [LatencyPoint(x, 1, latencies(0.01 + 2e-6 * x, 30, rng, 0.01)) for x in xs]
    bent = [LatencyPoint(x, 1, latencies(0.01 + 2e-6 * x + 1e-9 * x * x, 30, rng, 0.01)) for x in xs]
    w_straight = np.diff(step_latency_at(straight, 1500, 1, n_boot=800).band)[0]
    w_bent = np.diff(step_latency_at(bent, 1500, 1, n_boot=800).band)[0]
    assert w_bent > 2 * w_straight


def test_mix_al_is_the_weighted_mean_and_names_missing_categories() -> None:
    als = {"coding": [2.0, 3.0], "writing": [1.0, 1.5, 2.0]}
    est = mix_acceptance_length(als, {"coding": 3, "writing": 1}, n_boot=300)
    assert est.value == pytest.approx((3 * 2.5 + 1 * 1.5) / 4)
    assert est.band[0] < est.value < est.band[1]
    with pytest.raises(PredictionError, match="categor.*math.*measured categories: coding, writing"):
        mix_acceptance_length(als, {"math": 1.0})


def test_prediction_recovers_the_generating_model() -> None:
    rng = np.random.default_rng(4)
    ar, sd = curve_points(T_AR, (100, 1000, 2000), rng, 30), curve_points(T_SD, (100, 1000, 2000), rng, 30)
    als = {c: list(rng.normal(v, 0.3, 40)) for c, v in AL.items()}
    pred = predict_speedup(ar, sd, als, {"coding": 0.5, "writing": 0.5}, 3000, 4, n_boot=800)
    truth = (0.020 + 6e-6 * 3000) * 2.1 / (0.030 + 9e-6 * 3000)
    assert pred.speedup == pytest.approx(truth, rel=0.05)
    assert pred.band[0] <= truth <= pred.band[1]
    assert pred.acceptance_length.value == pytest.approx(2.1, abs=0.1)


def observations(rng: np.random.Generator, distort: str | None = None) -> list[Observation]:
    """AR and SD cases at 3 ISLs x 2 batch sizes, measured speedup = the model's (x 1.4 for `distort`)."""
    out = []
    mix = {"low_entropy": 0.5, "high_entropy": 0.5}
    for b in (1, 4):
        for x in (200, 1000, 2000):
            ar_id, sd_id = f"none-{x}-bs{b}", f"ngram-{x}-bs{b}"
            t_ar, t_sd = T_AR[b][0] + T_AR[b][1] * x, T_SD[b][0] + T_SD[b][1] * x
            al = sum(w * AL[c] for c, w in mix.items())
            measured = t_ar * al / t_sd * (1.4 if sd_id == distort else 1.0)
            out.append(Observation(ar_id, False, LatencyPoint(x, b, latencies(t_ar, 20, rng))))
            als = {c: tuple(rng.normal(AL[c], 0.2, 10)) for c in mix}
            out.append(Observation(sd_id, True, LatencyPoint(x, b, latencies(t_sd, 20, rng)), als, measured, ar_id))
    return out


def test_leave_one_out_predicts_held_out_cases_within_a_few_percent() -> None:
    held = leave_one_out(observations(np.random.default_rng(5)), n_boot=400)
    assert len(held) == 6 and all(h.prediction is not None for h in held)
    assert max(abs(h.error_pct) for h in held) < 6.0
    assert sum(bool(h.within_band) for h in held) >= 5


def test_leave_one_out_reports_a_case_the_model_cannot_explain() -> None:
    held = {h.case: h for h in leave_one_out(observations(np.random.default_rng(6), "ngram-1000-bs4"), n_boot=400)}
    bad = held["ngram-1000-bs4"]
    assert bad.error_pct == pytest.approx(100 / 1.4 - 100, abs=5)
    assert bad.within_band is False
    assert abs(held["ngram-1000-bs1"].error_pct) < 6.0


def test_leave_one_out_says_why_when_nothing_is_left_to_fit() -> None:
    obs = [o for o in observations(np.random.default_rng(7)) if o.point.batch_size == 1 and o.point.isl == 200]
    (held,) = leave_one_out(obs)
    assert held.prediction is None and "no measured case" in held.reason


def test_band_never_goes_below_zero_when_extrapolating_far() -> None:
    rng = np.random.default_rng(8)
    ar = [LatencyPoint(x, 1, latencies(0.01 + 2e-6 * x, 4, rng, 0.3)) for x in (100, 200)]
    sd = [LatencyPoint(x, 1, latencies(0.015 + 3e-6 * x, 4, rng, 0.3)) for x in (100, 200)]
    pred = predict_speedup(ar, sd, {"coding": [2.0, 2.2]}, {"coding": 1.0}, 3000, 1, n_boot=1000)
    assert (pred.sd_step_latency.samples < 0).any() or (pred.ar_step_latency.samples < 0).any()
    assert pred.band is not None and pred.band[0] > 0
    assert any("extrapolated" in n for n in pred.notes)


def test_fit_inputs_keep_unstable_als_and_their_latency_only_when_a_side_has_nothing_else() -> None:
    """AL does not depend on timing; an unstable case's step latency is used only where its side has
    no stable case, and then with a note."""
    ar = Observation("ar", False, LatencyPoint(1000, 1, (0.010, 0.011)))
    sd_stable = Observation("sd-a", True, LatencyPoint(1000, 1, (0.020,)), {"coding": (2.0,)}, 1.5, "ar")
    sd_noisy = Observation("sd-b", True, LatencyPoint(2000, 1, (0.030,)), {"math": (3.0,)}, 1.1, "ar",
                           unstable="rounds disagree")
    both = fit_inputs([ar, sd_stable, sd_noisy])
    assert both.sd_points == (sd_stable.point,) and both.ar_points == (ar.point,)
    assert both.als_by_category == {"coding": [2.0], "math": [3.0]} and both.notes == ()
    alone = fit_inputs([ar, sd_noisy])
    assert alone.sd_points == (sd_noisy.point,)
    assert alone.notes == ("SD step latency at batch size 1 from unstable case(s) only (sd-b: rounds disagree): "
                           "the band does not cover that noise",)
    pred = predict_from(alone, {"math": 1.0}, 2000, 1, n_boot=100)
    assert pred.speedup == pytest.approx(0.0105 * 3.0 / 0.030)
    assert pred.notes[0] == alone.notes[0]
