"""Speedup prediction for a category mix, ISL and batch size (pure maths, bootstrap bands).

SPEED-Bench's analytical speedup, applied to settings that were not measured:

    S(mix, isl, b) = t_AR(isl, b) x AL(mix) / t_SD(isl, b)

- t_AR: autoregressive step latency, per request TPOT = (t_{n-1} - t_0) / (N - L_0) (one token
  per AR step, so event framing does not matter); t_SD: SD step latency, per request
  (t_{n-1} - t_0) / D with D the authoritative decode steps. A measured case contributes the
  mean over its requests at x = its mean turn-0 ISL.
- Step-latency curve over ISL, per batch size: the ordinary least-squares line through the
  measured cases, t(x) = a + c x with c = sum (x_k - xbar)(t_k - tbar) / sum (x_k - xbar)^2 and
  a = tbar - c xbar (one distinct ISL: flat, t = tbar, flagged). Between measured batch sizes
  b_lo < b < b_hi the two curves are interpolated linearly in b,
  t(x, b) = t(x, b_lo) + (b - b_lo) / (b_hi - b_lo) x (t(x, b_hi) - t(x, b_lo)); outside the
  measured batch sizes nothing is predicted. An ISL outside the measured range is extrapolated
  along the line and flagged.
- AL(mix) = sum_c w_c AL_c / sum_c w_c, AL_c the mean request AL of category c.

Error band: B bootstrap replicates of every input (each case's mean step latency over its
requests; each category's mean AL over its requests), the curves refitted on every replicate,
and, when a curve has K >= 3 cases, the fit residual added as N(0, s^2) noise with
s^2 = sum (t_k - t(x_k))^2 / (K - 2). The band is the percentile interval of the replicated S.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from pytest_speedbench.metrics import stats


class PredictionError(ValueError):
    """The measured cases cannot support the requested prediction (the message says why)."""


@dataclass(frozen=True)
class LatencyPoint:
    """One measured case on a step-latency curve."""

    isl: float
    batch_size: int
    step_latencies: tuple[float, ...]  # per request, seconds

    @property
    def mean(self) -> float:
        return float(np.mean(self.step_latencies))


@dataclass(frozen=True)
class Estimate:
    value: float
    band: list[float] | None
    samples: np.ndarray = field(repr=False)
    notes: tuple[str, ...] = ()


def _mean_replicates(values: Sequence[float], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    arr = stats.finite(values)
    if arr.size == 0:
        raise PredictionError("a measured case has no finite per-request value")
    return stats.bootstrap_samples([arr], lambda v: v.mean(axis=1), n_boot=n_boot, rng=rng)


def fit_line(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OLS intercept a and slope c of y over x along the last axis (flat when x has no spread).

    x: (K,); y: (K,) or (B, K). Returns arrays of shape () or (B,).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    xbar = x.mean()
    sxx = float(((x - xbar) ** 2).sum())
    ybar = y.mean(axis=-1)
    if sxx == 0.0:
        return ybar, np.zeros_like(ybar)
    slope = ((x - xbar) * (y - ybar[..., None])).sum(axis=-1) / sxx
    return ybar - slope * xbar, slope


def _curve_at(points: Sequence[LatencyPoint], isl: float, n_boot: int, rng: np.random.Generator) -> Estimate:
    """One batch size's line at `isl`: point value, replicates (+ residual noise when K >= 3)."""
    x = np.array([p.isl for p in points], dtype=float)
    means = np.array([p.mean for p in points])
    reps = np.stack([_mean_replicates(p.step_latencies, n_boot, rng) for p in points], axis=1)
    a, c = fit_line(x, means)
    value = float(a + c * isl)
    ra, rc = fit_line(x, reps)
    samples = ra + rc * isl
    notes = []
    if np.unique(x).size == 1:
        notes.append(f"one ISL measured ({x[0]:.0f} tokens) at batch size {points[0].batch_size}: assumed flat in ISL")
    elif not x.min() <= isl <= x.max():
        notes.append(f"ISL {isl:.0f} is outside the measured {x.min():.0f}-{x.max():.0f} at batch size "
                     f"{points[0].batch_size}: extrapolated along the fitted line")
    if len(points) >= 3:
        resid = means - (a + c * x)
        s = float(np.sqrt((resid**2).sum() / (len(points) - 2)))
        samples = samples + rng.normal(0.0, s, size=samples.shape)
    return Estimate(value, None, samples, tuple(notes))


def step_latency_at(
    points: Sequence[LatencyPoint], isl: float, batch_size: int, *, n_boot: int = 2000,
    rng: np.random.Generator | None = None, level: float = 0.95,
) -> Estimate:
    """t(isl, batch_size) from the measured `points` (module docstring), with its band."""
    rng = rng or np.random.default_rng(0)
    by_batch: dict[int, list[LatencyPoint]] = {}
    for p in points:
        by_batch.setdefault(p.batch_size, []).append(p)
    if not by_batch:
        raise PredictionError("no measured case to fit a step-latency curve on")
    sizes = sorted(by_batch)
    if batch_size in by_batch:
        est = _curve_at(by_batch[batch_size], isl, n_boot, rng)
    elif sizes[0] < batch_size < sizes[-1]:
        lo = max(b for b in sizes if b < batch_size)
        hi = min(b for b in sizes if b > batch_size)
        w = (batch_size - lo) / (hi - lo)
        e_lo, e_hi = _curve_at(by_batch[lo], isl, n_boot, rng), _curve_at(by_batch[hi], isl, n_boot, rng)
        est = Estimate(
            e_lo.value + w * (e_hi.value - e_lo.value), None, e_lo.samples + w * (e_hi.samples - e_lo.samples),
            (*e_lo.notes, *e_hi.notes, f"batch size {batch_size} interpolated between {lo} and {hi}"),
        )
    else:
        raise PredictionError(
            f"batch size {batch_size} is outside the measured batch sizes {', '.join(map(str, sizes))}: "
            "measure it (nothing is extrapolated over batch size)"
        )
    return Estimate(est.value, stats.percentile_interval(est.samples, level), est.samples, est.notes)


def mix_acceptance_length(
    als_by_category: Mapping[str, Sequence[float]], weights: Mapping[str, float], *, n_boot: int = 2000,
    rng: np.random.Generator | None = None, level: float = 0.95,
) -> Estimate:
    """AL(mix) = sum_c w_c AL_c / sum_c w_c with per-category bootstrap replicates."""
    rng = rng or np.random.default_rng(0)
    missing = [c for c in weights if not len(stats.finite(als_by_category.get(c, ())))]
    if missing:
        have = ", ".join(sorted(c for c, v in als_by_category.items() if len(stats.finite(v)))) or "none"
        raise PredictionError(f"no measured AL for categor{'y' if len(missing) == 1 else 'ies'} "
                              f"{', '.join(missing)}; measured categories: {have}")
    total = sum(weights.values())
    if total <= 0 or any(w < 0 for w in weights.values()):
        raise PredictionError(f"mix weights must be >= 0 with a positive sum, got {dict(weights)}")
    value = sum(w * float(np.mean(stats.finite(als_by_category[c]))) for c, w in weights.items()) / total
    samples = sum(w * _mean_replicates(als_by_category[c], n_boot, rng) for c, w in weights.items()) / total
    return Estimate(value, stats.percentile_interval(samples, level), samples)


@dataclass(frozen=True)
class Prediction:
    speedup: float
    band: list[float] | None
    ar_step_latency: Estimate
    sd_step_latency: Estimate
    acceptance_length: Estimate
    input_notes: tuple[str, ...] = ()  # what the inputs were chosen from (see `fit_inputs`)

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.input_notes, *self.ar_step_latency.notes, *self.sd_step_latency.notes)))


def predict_speedup(
    ar_points: Sequence[LatencyPoint], sd_points: Sequence[LatencyPoint],
    als_by_category: Mapping[str, Sequence[float]], weights: Mapping[str, float],
    isl: float, batch_size: int, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
) -> Prediction:
    """S = t_AR(isl, b) x AL(mix) / t_SD(isl, b), band from the replicated inputs."""
    rng = np.random.default_rng(seed)
    t_ar = step_latency_at(ar_points, isl, batch_size, n_boot=n_boot, rng=rng, level=level)
    t_sd = step_latency_at(sd_points, isl, batch_size, n_boot=n_boot, rng=rng, level=level)
    al = mix_acceptance_length(als_by_category, weights, n_boot=n_boot, rng=rng, level=level)
    if t_sd.value <= 0:
        raise PredictionError(f"the fitted SD step latency at ISL {isl:.0f}, batch size {batch_size} is "
                              f"{t_sd.value:.4g} s (not positive): the line does not hold that far out")
    with np.errstate(divide="ignore", invalid="ignore"):
        # a replicate whose fitted line crosses zero has no meaning as a step latency: dropped
        valid = (t_sd.samples > 0) & (t_ar.samples > 0)
        samples = np.where(valid, t_ar.samples * al.samples / t_sd.samples, np.nan)
    return Prediction(t_ar.value * al.value / t_sd.value, stats.percentile_interval(samples, level), t_ar, t_sd, al)


# --- leave-one-out check ------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """One measured case, as the predictor needs it."""

    case: str
    speculative: bool
    point: LatencyPoint
    als_by_category: Mapping[str, tuple[float, ...]] = field(default_factory=dict)  # SD only
    measured_speedup: float | None = None  # SD only: the measured value predictions are checked against
    twin: str | None = None  # SD only: the AR case's id
    unstable: str | None = None  # why its timing is not trusted (its rounds disagreed); its ALs still are

    @property
    def mix(self) -> dict[str, float]:
        """The case's own category mix: each category's share of its requests."""
        counts = {c: len(v) for c, v in self.als_by_category.items() if len(v)}
        total = sum(counts.values())
        return {c: n / total for c, n in counts.items()} if total else {}


@dataclass(frozen=True)
class HeldOut:
    case: str
    measured: float
    prediction: Prediction | None
    reason: str | None = None  # why no prediction could be made

    @property
    def error_pct(self) -> float | None:
        """(predicted - measured) / measured x 100."""
        if self.prediction is None or not self.measured:
            return None
        return (self.prediction.speedup - self.measured) / self.measured * 100.0

    @property
    def within_band(self) -> bool | None:
        if self.prediction is None or self.prediction.band is None:
            return None
        lo, hi = self.prediction.band
        return lo <= self.measured <= hi


def pool_als(observations: Sequence[Observation]) -> dict[str, list[float]]:
    """Request ALs per category over the SD observations."""
    pooled: dict[str, list[float]] = {}
    for obs in observations:
        for cat, values in obs.als_by_category.items():
            pooled.setdefault(cat, []).extend(values)
    return pooled


@dataclass(frozen=True)
class FitInputs:
    """What one prediction is fitted on."""

    ar_points: tuple[LatencyPoint, ...]
    sd_points: tuple[LatencyPoint, ...]
    als_by_category: dict[str, list[float]]
    notes: tuple[str, ...]


def fit_inputs(observations: Sequence[Observation]) -> FitInputs:
    """The latency points and ALs a prediction uses, and why.

    AL does not depend on timing, so every SD case's request ALs count. A case whose rounds
    disagreed (`Observation.unstable`: a noisy machine, not a property of the engine) gives no
    latency point while its curve (AR or SD, one batch size) has a stable case; a curve with only
    unstable cases uses them, with a note, because their mean step latency is still the best
    estimate there is and refusing would turn one noisy run into no answer. The band then
    understates the noise.
    """
    notes = []
    sides: list[tuple[LatencyPoint, ...]] = []
    for speculative, label in ((False, "AR"), (True, "SD")):
        points = []
        side = [o for o in observations if o.speculative == speculative]
        for b in sorted({o.point.batch_size for o in side}):
            curve = [o for o in side if o.point.batch_size == b]
            stable = [o for o in curve if not o.unstable]
            points += [o.point for o in stable or curve]
            if not stable:
                notes.append(f"{label} step latency at batch size {b} from unstable case(s) only "
                             f"({'; '.join(f'{o.case}: {o.unstable}' for o in curve)}): the band does not cover "
                             "that noise")
        sides.append(tuple(points))
    return FitInputs(sides[0], sides[1], pool_als([o for o in observations if o.speculative]), tuple(notes))


def predict_from(inputs: FitInputs, weights: Mapping[str, float], isl: float, batch_size: int,
                 *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Prediction:
    """`predict_speedup` on the inputs `fit_inputs` chose, its notes carried on the prediction."""
    pred = predict_speedup(inputs.ar_points, inputs.sd_points, inputs.als_by_category, weights, isl, batch_size,
                           n_boot=n_boot, seed=seed, level=level)
    return replace(pred, input_notes=inputs.notes)


def leave_one_out(observations: Sequence[Observation], *, n_boot: int = 2000, seed: int = 0) -> list[HeldOut]:
    """Predict every SD case with a measured speedup from the others.

    Held out for case k: k itself and its AR twin (both latency curves lose the point at k's
    ISL and batch size) and k's ALs; k contributes only its category mix, ISL and batch size.
    An unstable case is not a check: its measured speedup is the noise, not the engine.
    """
    out = []
    for k in observations:
        if not k.speculative or k.measured_speedup is None:
            continue
        if k.unstable:
            out.append(HeldOut(k.case, k.measured_speedup, None, f"not checked, its measured speedup is not "
                                                                 f"trusted ({k.unstable})"))
            continue
        rest = [o for o in observations if o.case not in (k.case, k.twin)]
        try:
            pred = predict_from(fit_inputs(rest), k.mix, k.point.isl, k.point.batch_size, n_boot=n_boot, seed=seed)
            out.append(HeldOut(k.case, k.measured_speedup, pred))
        except PredictionError as exc:
            out.append(HeldOut(k.case, k.measured_speedup, None, str(exc)))
    return out
