"""Speedups of an SD run over its drafter=none twin, with 95% bootstrap intervals (pure).

- measured: SD value / AR value of user TPS and of output TPS;
- analytical (SPEED-Bench): step_latency(AR) x AL(SD) / step_latency(SD).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pytest_speedbench.measure.records import RequestRecord, RunRecords
from pytest_speedbench.metrics import stats
from pytest_speedbench.metrics.catalogue import SPEEDUP_KEYS
from pytest_speedbench.metrics.request import request_e2e, request_tpot, request_user_tps
from pytest_speedbench.metrics.run import _latency_rows, build_step_view


def empty_speedups() -> dict[str, Any]:
    """Speedup keys for a case without an autoregressive twin."""
    out: dict[str, Any] = {}
    for key in SPEEDUP_KEYS:
        out[key] = None
        out[f"{key}_ci95"] = None
    out["speedup_analytical_inputs"] = None
    return out


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def _analytical_rows(run: RunRecords, metrics: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Paired per-request (AL, step latency) of the SD run, with the headline AL's decode steps."""
    ok = [r for r in run.measured if r.ok]
    rows = _latency_rows(build_step_view(ok, run.engine_counters, metrics.get("draft_length")))
    return [a for a, _ in rows], [s for _, s in rows]


def compute_speedups(
    sd: RunRecords,
    ar: RunRecords,
    sd_metrics: dict[str, Any],
    ar_metrics: dict[str, Any],
    *,
    seed: int = 0,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Measured and analytical speedups of an SD run over its drafter=none twin, with 95% CIs.

    - user TPS: ratio of mean per-request user TPS; CI resamples each run's requests.
    - output TPS: ratio of measured-window throughputs; the window is not resampled, so the
      CI rescales the point estimate by the bootstrap spread of sum(tokens) / sum(E2E).
    - goodput (with --goodput): SD goodput_rps / AR goodput_rps, no interval.
    - analytical: step_latency(AR) x AL(SD) / step_latency(SD). The AR twin's step latency is
      its TPOT (each AR step yields one token, so this is immune to event coalescing and equals
      the chunk step latency when every step is streamed); the SD step latency is the one
      consistent with the authoritative AL (`step_latency_effective_mean_s`).
    """
    out = empty_speedups()
    sd_ok = [r for r in sd.measured if r.ok]
    ar_ok = [r for r in ar.measured if r.ok]

    out["speedup_user_tps"] = _ratio(sd_metrics["user_tps"]["mean"], ar_metrics["user_tps"]["mean"])
    out["speedup_user_tps_ci95"] = stats.bootstrap_ratio_ci(
        [request_user_tps(r) for r in sd_ok], [request_user_tps(r) for r in ar_ok], n_boot=n_boot, seed=seed
    )

    speedup_output = _ratio(sd_metrics["output_tps"], ar_metrics["output_tps"])
    out["speedup_output_tps"] = speedup_output
    if speedup_output is not None:
        out["speedup_output_tps_ci95"] = _output_tps_ci(sd_ok, ar_ok, speedup_output, n_boot, seed + 1)

    out["speedup_goodput"] = _ratio(sd_metrics.get("goodput_rps"), ar_metrics.get("goodput_rps"))

    ar_step = ar_metrics["tpot_s"]["mean"]
    sd_al, sd_step = sd_metrics["acceptance_length"], sd_metrics["step_latency_effective_mean_s"]
    if ar_step is not None and sd_al is not None and sd_step:
        out["speedup_analytical"] = ar_step * sd_al / sd_step
        out["speedup_analytical_inputs"] = {
            "ar_step_latency_s": ar_step,
            "ar_step_latency_basis": "tpot",
            "sd_acceptance_length": sd_al,
            "sd_step_latency_s": sd_step,
            "sd_al_source": sd_metrics.get("al_source"),
        }
        sd_als, sd_steps = _analytical_rows(sd, sd_metrics)
        ar_tpots = stats.finite([request_tpot(r) for r in ar_ok])
        if sd_als and ar_tpots.size:
            rng = np.random.default_rng([seed, 2])
            sd_samples = stats.bootstrap_samples(
                [sd_als, sd_steps], lambda a, s: a.mean(axis=1) / s.mean(axis=1), n_boot=n_boot, rng=rng
            )
            ar_samples = stats.bootstrap_samples([ar_tpots], lambda t: t.mean(axis=1), n_boot=n_boot, rng=rng)
            out["speedup_analytical_ci95"] = stats.percentile_interval(ar_samples * sd_samples)
    return out


def _output_tps_ci(
    sd_ok: Sequence[RequestRecord], ar_ok: Sequence[RequestRecord], point: float, n_boot: int, seed: int
) -> list[float] | None:
    """CI of the output-TPS speedup: point x relative bootstrap spread of tokens/E2E per side."""

    def columns(reqs: Sequence[RequestRecord]) -> tuple[list[float], list[float]]:
        rows = [(float(r.num_tokens), request_e2e(r)) for r in reqs]
        rows = [(n, e) for n, e in rows if e is not None and e > 0]
        return [n for n, _ in rows], [e for _, e in rows]

    sd_cols, ar_cols = columns(sd_ok), columns(ar_ok)
    if not sd_cols[0] or not ar_cols[0]:
        return None
    rng = np.random.default_rng([seed, 1])

    def rate(n: np.ndarray, e: np.ndarray) -> np.ndarray:
        return n.sum(axis=1) / e.sum(axis=1)

    sd_rel = stats.bootstrap_samples(sd_cols, rate, n_boot=n_boot, rng=rng) / (sum(sd_cols[0]) / sum(sd_cols[1]))
    ar_rel = stats.bootstrap_samples(ar_cols, rate, n_boot=n_boot, rng=rng) / (sum(ar_cols[0]) / sum(ar_cols[1]))
    return stats.percentile_interval(point * sd_rel / ar_rel)
