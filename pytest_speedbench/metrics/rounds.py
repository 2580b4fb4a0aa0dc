"""Interleaved rounds: an SD case and its drafter=none twin measured in turns (AR, SD, AR, SD, ...)
over the same prompts, so slow drift of the machine (thermal state, other tenants, a VM pausing
the CPU) lands on both sides alike and cancels in their ratio. Pure functions, no I/O.

Notation: R rounds, P prompts (request turns measured ok on both sides in every round);
sd[r, p] and ar[r, p] = user TPS of prompt p in round r.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pytest_speedbench.measure.records import RequestRecord, RunRecords
from pytest_speedbench.metrics import stats
from pytest_speedbench.metrics.catalogue import SPEEDUP_KEYS
from pytest_speedbench.metrics.goodput import goodput
from pytest_speedbench.metrics.run import output_tps
from pytest_speedbench.metrics.speedup import compute_speedups

#: a measured speedup above AL x (1 + margin) is physically implausible: a verification step
#: (drafting included) never costs less than one autoregressive step, so tokens per second can
#: grow at most by the tokens per step. The margin absorbs timer noise on short runs.
PLAUSIBILITY_MARGIN = 0.2
#: rounds disagree "beyond their spread" when the round effect's F test has p below this
ROUNDS_ALPHA = 0.01
#: ... and their speedups differ by more than this (max / min - 1): with steady prompts the F test
#: finds a 3% round difference "significant" (seen on the hf demo), yet a difference below the
#: default speedup rule's tolerance (5%) cannot move a verdict, so it does not make a case unstable
ROUNDS_MIN_SPREAD = 0.05
#: rounds further apart than this (max / min - 1) mark the case unstable whatever the F test says:
#: with few prompts the test has little power (2 rounds x 4 prompts: 3 residual degrees of
#: freedom), and a demo run on a loaded machine gave rounds of 1.61 and 0.23 with p > 0.01
ROUNDS_MAX_SPREAD = 0.25


def _user_tps(r: RequestRecord) -> float | None:
    if not r.ok or len(r.chunk_tokens) < 2:
        return None
    decode = r.chunk_times[-1] - r.chunk_times[0]
    return sum(r.chunk_tokens[1:]) / decode if decode > 0 else None


def _by_prompt(run: RunRecords) -> dict[tuple[str, int], float]:
    out = {}
    for r in run.measured:
        value = _user_tps(r)
        if value is not None:
            out[(r.prompt_id, r.turn)] = value
    return out


def paired_user_tps(sd_rounds: Sequence[RunRecords], ar_rounds: Sequence[RunRecords]
                    ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int]]]:
    """(sd[R, P], ar[R, P], prompt keys): user TPS per round and prompt (turn), keeping only the
    prompts measured on both sides in every round, so each comparison is like for like."""
    sides = [[_by_prompt(run) for run in sd_rounds], [_by_prompt(run) for run in ar_rounds]]
    maps = sides[0] + sides[1]
    keys = sorted(set.intersection(*(set(m) for m in maps))) if maps else []
    sd = np.array([[m[k] for k in keys] for m in sides[0]], dtype=float).reshape(len(sd_rounds), len(keys))
    ar = np.array([[m[k] for k in keys] for m in sides[1]], dtype=float).reshape(len(ar_rounds), len(keys))
    return sd, ar, keys


def ratio_of_means(sd: np.ndarray, ar: np.ndarray) -> float | None:
    """speedup = mean_{r,p} sd[r, p] / mean_{r,p} ar[r, p] (the ratio of mean user TPS)."""
    return float(sd.mean() / ar.mean()) if sd.size and ar.size and ar.mean() > 0 else None


def round_speedups(sd: np.ndarray, ar: np.ndarray) -> list[float]:
    """Per round r: mean_p sd[r, p] / mean_p ar[r, p]."""
    return [float(s.mean() / a.mean()) for s, a in zip(sd, ar)] if sd.size else []


def paired_rounds_ci(sd: np.ndarray, ar: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> list[float] | None:
    """Percentile interval of the speedup under a two-level paired bootstrap.

    Each replicate draws R rounds and P prompts with replacement and takes the same (round,
    prompt) cells on both sides: speedup* = mean sd[r*, p*] / mean ar[r*, p*]. Resampling rounds
    makes the interval cover round-to-round variation (what drift leaves), resampling prompts
    covers prompt-to-prompt spread, and pairing cancels what both sides share.
    """
    if not sd.size:
        return None
    rounds, prompts = sd.shape
    rng = np.random.default_rng([seed, 16])
    ri = rng.integers(0, rounds, size=(n_boot, rounds, 1))
    pi = rng.integers(0, prompts, size=(n_boot, 1, prompts))
    top, bottom = sd[ri, pi].mean(axis=(1, 2)), ar[ri, pi].mean(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return stats.percentile_interval(top / bottom, level)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-12:
            break
    return h


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularized incomplete beta function (numpy has none; scipy is not a dependency)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def f_survival(f: float, d1: float, d2: float) -> float:
    """P(F_{d1, d2} > f) = I_{d2 / (d2 + d1 f)}(d2 / 2, d1 / 2)."""
    if f <= 0:
        return 1.0
    if math.isinf(f):
        return 0.0
    return regularized_beta(d2 / (d2 + d1 * f), d2 / 2.0, d1 / 2.0)


def round_effect(sd: np.ndarray, ar: np.ndarray) -> dict[str, float] | None:
    """Do the rounds disagree beyond their spread? Two-way ANOVA without replication on
    d[r, p] = log(sd[r, p] / ar[r, p]) (prompt = block):

        SS_rounds = P sum_r (dbar_r. - dbar)^2,   df1 = R - 1
        SS_resid  = sum_{r,p} (d[r,p] - dbar_r. - dbar_.p + dbar)^2,   df2 = (R - 1)(P - 1)
        F = (SS_rounds / df1) / (SS_resid / df2),   p = P(F_{df1, df2} > F)

    The residual is the prompt-by-round noise, so a round that ran differently for every
    prompt (a drift the interleaving did not cancel) stands out against it, while prompts that
    are simply harder than others (the same in every round) do not count. None when R < 2 or
    P < 2 (nothing to test).
    """
    if sd.ndim != 2 or sd.shape[0] < 2 or sd.shape[1] < 2:
        return None
    d = np.log(sd / ar)
    rounds, prompts = d.shape
    grand = d.mean()
    row, col = d.mean(axis=1, keepdims=True), d.mean(axis=0, keepdims=True)
    ss_rounds = float(prompts * ((row - grand) ** 2).sum())
    ss_resid = float(((d - row - col + grand) ** 2).sum())
    df1, df2 = rounds - 1, (rounds - 1) * (prompts - 1)
    if ss_resid <= 1e-18 * max(ss_rounds, 1e-300):
        f = math.inf if ss_rounds > 0 else 0.0
    else:
        f = (ss_rounds / df1) / (ss_resid / df2)
    return {"f": f, "df1": float(df1), "df2": float(df2), "p": f_survival(f, df1, df2)}


def implausible_speedups(speedups: dict[str, Any], al: float | None, al_ci: Sequence[float] | None,
                         margin: float = PLAUSIBILITY_MARGIN) -> list[str]:
    """Speedups above what the measured AL allows: value > AL_hi x (1 + margin), with AL_hi the
    upper end of the AL's interval (or the AL). A verification step never costs less than an AR
    step, so tokens per second grow at most by tokens per step (the AL)."""
    if al is None:
        return []
    al_hi = max(al, al_ci[1]) if al_ci else al
    bound = al_hi * (1.0 + margin)
    return [f"{key} {speedups[key]:.2f} exceeds what AL {al:.2f} allows (at most {bound:.2f}: a verification "
            f"step never costs less than an AR step)"
            for key in SPEEDUP_KEYS if isinstance(speedups.get(key), (int, float)) and speedups[key] > bound]


def assess_stability(speedups: dict[str, Any], al: float | None, al_ci: Sequence[float] | None,
                     sd: np.ndarray | None = None, ar: np.ndarray | None = None,
                     alpha: float = ROUNDS_ALPHA, min_spread: float = ROUNDS_MIN_SPREAD,
                     max_spread: float = ROUNDS_MAX_SPREAD) -> dict[str, Any]:
    """{verdict: stable|unstable, reasons, round_speedups_user_tps, round_effect}: unstable when a
    speedup is implausible for the AL, when the rounds disagree beyond their spread (p < alpha)
    by more than min_spread, or when they lie more than max_spread apart whatever the test says
    (spread = max / min of the per-round speedups - 1)."""
    reasons = implausible_speedups(speedups, al, al_ci)
    effect = round_effect(sd, ar) if sd is not None and ar is not None else None
    per_round = round_speedups(sd, ar) if sd is not None and ar is not None else []
    spread = max(per_round) / min(per_round) - 1.0 if per_round and min(per_round) > 0 else 0.0
    if effect is not None and effect["p"] < alpha and spread > min_spread:
        reasons.append("rounds disagree beyond their spread: user-TPS speedup per round "
                       + ", ".join(f"{s:.2f}" for s in per_round)
                       + f" ({spread:.0%} apart; round effect F={effect['f']:.3g}, p={effect['p']:.2g} < {alpha:g})")
    elif spread > max_spread:
        reasons.append("rounds disagree: user-TPS speedup per round " + ", ".join(f"{s:.2f}" for s in per_round)
                       + f" ({spread:.0%} apart, more than {max_spread:.0%}): the machine was not steady")
    return {"verdict": "unstable" if reasons else "stable", "reasons": reasons,
            "rounds": len(per_round) or None, "round_speedups_user_tps": per_round, "round_effect": effect}


def merge_rounds(runs: Sequence[RunRecords]) -> RunRecords:
    """One RunRecords over every pass: requests concatenated, run-level counters summed
    (numbers added, per-position lists added element-wise), `client_info.rounds` = passes."""
    requests = [r for run in runs for r in run.requests]
    counters = None
    if any(run.engine_counters for run in runs):
        counters = {}
        for run in runs:
            for key, value in (run.engine_counters or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    counters[key] = counters.get(key, 0) + value
                elif isinstance(value, list):
                    prev = counters.get(key) or []
                    width = max(len(prev), len(value))
                    counters[key] = [(prev[i] if i < len(prev) else 0) + (value[i] if i < len(value) else 0)
                                     for i in range(width)]
    info = dict(runs[-1].client_info) if runs else {}
    info["rounds"] = len(runs)
    return RunRecords(requests, counters, info)


def output_tps_rounds(extra: dict[str, Any], runs: Sequence[RunRecords],
                      slos: Mapping[str, float] | None = None) -> None:
    """Per-pass output TPS into `extra` (`output_tps_rounds`), and `output_tps` = their mean:
    a measured window must not span the other side's passes. With `slos`, goodput likewise
    (`goodput_rps_rounds`, `goodput_rps` = their mean): a window over both sides would halve it."""
    per_round = [output_tps([r for r in run.measured if r.ok]) for run in runs]
    extra["output_tps_rounds"] = per_round
    extra["output_tps"] = float(sum(v for v in per_round if v) / len(per_round)) if all(per_round) else None
    if slos:
        good = [goodput([r for r in run.measured if r.ok], slos)["goodput_rps"] for run in runs]
        extra["goodput_rps_rounds"] = good
        extra["goodput_rps"] = float(sum(good) / len(good)) if all(g is not None for g in good) else None


def interleaved_speedups(sd_runs: Sequence[RunRecords], ar_runs: Sequence[RunRecords], extra: dict[str, Any],
                         ar_extra: dict[str, Any], *, seed: int = 0, slos: Mapping[str, float] | None = None
                         ) -> tuple[dict[str, Any], list[float]]:
    """(speedup keys + `stability`, the AR side's mean user TPS per round) of an SD case measured
    in rounds with its twin. `extra` and `ar_extra` are the two sides' run metrics; their
    `output_tps` becomes the mean over passes (`output_tps_rounds`).

    speedup_user_tps = ratio of means over (round, prompt) cells measured on both sides, with the
    paired two-level bootstrap interval (`paired_rounds_ci`); speedup_output_tps_rounds[r] =
    output_tps(SD, r) / output_tps(AR, r); the stability verdict from `assess_stability`.
    """
    for side, runs in ((extra, sd_runs), (ar_extra, ar_runs)):
        output_tps_rounds(side, runs, slos)
    speedups = compute_speedups(merge_rounds(sd_runs), merge_rounds(ar_runs), extra, ar_extra, seed=seed)
    sd_tps, ar_tps, keys = paired_user_tps(sd_runs, ar_runs)
    if keys:
        speedups["speedup_user_tps"] = ratio_of_means(sd_tps, ar_tps)
        speedups["speedup_user_tps_ci95"] = paired_rounds_ci(sd_tps, ar_tps, seed=seed)
    speedups["speedup_output_tps_rounds"] = [
        s / a for s, a in zip(extra["output_tps_rounds"], ar_extra["output_tps_rounds"]) if s and a]
    speedups["speedup_method"] = (f"interleaved: {len(sd_runs)} round(s) AR, SD over the same {len(keys)} "
                                  "prompt turn(s); interval over rounds and prompts, paired")
    speedups["stability"] = assess_stability(speedups, extra.get("acceptance_length"),
                                             extra.get("acceptance_length_ci95"),
                                             sd_tps if keys else None, ar_tps if keys else None)
    return speedups, (ar_tps.mean(axis=1).tolist() if keys else [])
