"""The optimal draft length per batch size, with a paired bootstrap over prompts (pure maths).

Inputs per batch size b: the drafter=none run (AR) and one SD run per draft length g, each as
its output TPS plus per-prompt totals from the saved per-request rows (turns of one prompt id
summed): tok_r[p] = sum of N, e2e_r[p] = sum of E2E over the turns of prompt p in run r.

Measured speedup (docs/metrics.md): S_g = output_tps(SD, g) / output_tps(AR), or the case's own
recorded output-TPS speedup when it has one (a session measuring SD and AR in interleaved rounds
records the drift-cancelled ratio; the bootstrap below only rescales it).

Paired bootstrap over prompts: the prompt ids present in every run of the batch size (P, |P| = n)
are resampled with replacement, the SAME draw i for every run, so prompt difficulty cancels
between draft lengths. Output TPS is a window quantity (tokens / wall time of the whole run),
which prompts cannot be resampled out of, so a replicate rescales the point estimate by each
run's relative rate change on the resample (as `run.compute_speedups` does, but paired):

    rate_r(i)  = sum_{p in draw i} tok_r[p] / sum_{p in draw i} e2e_r[p]
    S_g*(i)    = S_g x [rate_g(i) / rate_g(P)] / [rate_AR(i) / rate_AR(P)]

The best draft length g1 = argmax_g S_g; the runner-up g2 is the second largest. The 95%
interval of S_g1 is the percentile interval of S_g1*; the difference d = S_g1 - S_g2 has the
percentile interval of d* = S_g1* - S_g2*, one-sided p = fraction of d* <= 0, and g1 "beats" g2
when the interval's lower end is above 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pytest_speedbench.metrics import stats


@dataclass(frozen=True)
class RunSide:
    """One run as the sweep sees it: output TPS, AL and per-prompt (tokens, E2E) totals."""

    output_tps: float
    prompts: Mapping[str, tuple[float, float]]  # prompt id -> (sum tokens, sum E2E seconds)
    acceptance_length: float | None = None
    user_tps: float | None = None
    speedup: float | None = None  # the recorded output-TPS speedup over the AR twin, if any
    user_speedup: float | None = None  # the recorded user-TPS speedup, if any

    def speedup_over(self, ar: RunSide) -> float:
        return self.speedup if self.speedup is not None else self.output_tps / ar.output_tps


def prompt_totals(rows: Iterable[Mapping[str, Any]]) -> dict[str, tuple[float, float]]:
    """Per prompt id: (sum of tokens, sum of E2E seconds) over its turns; rows without E2E skipped."""
    out: dict[str, list[float]] = {}
    for row in rows:
        e2e = row.get("e2e_s")
        if e2e is None:
            continue
        acc = out.setdefault(str(row["id"]), [0.0, 0.0])
        acc[0] += float(row.get("tokens") or 0)
        acc[1] += float(e2e)
    return {k: (v[0], v[1]) for k, v in out.items()}


@dataclass(frozen=True)
class DraftPoint:
    draft_length: int
    speedup: float
    ci95: list[float] | None
    acceptance_length: float | None
    user_tps_speedup: float | None = None


@dataclass(frozen=True)
class BatchChoice:
    """The sweep's answer for one batch size."""

    batch_size: int
    points: tuple[DraftPoint, ...]  # by draft length
    best: int | None
    runner_up: int | None
    delta: float | None = None  # S_best - S_runner_up
    delta_ci95: list[float] | None = None
    p_value: float | None = None
    beats: bool | None = None
    n_prompts: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    def point(self, draft_length: int | None) -> DraftPoint | None:
        return next((p for p in self.points if p.draft_length == draft_length), None)


def _rates(side: RunSide, ids: Sequence[str], idx: np.ndarray) -> np.ndarray:
    """rate_r(i) / rate_r(P) for every resample row of `idx`."""
    tok = np.array([side.prompts[p][0] for p in ids], dtype=float)
    e2e = np.array([side.prompts[p][1] for p in ids], dtype=float)
    full = tok.sum() / e2e.sum()
    return (tok[idx].sum(axis=1) / e2e[idx].sum(axis=1)) / full


def paired_speedup_samples(
    ar: RunSide, sd: Mapping[int, RunSide], *, n_boot: int = 2000, seed: int = 0
) -> tuple[list[str], dict[int, np.ndarray]]:
    """The common prompt ids and S_g* replicates (n_boot,) per draft length, one shared draw."""
    common = set(ar.prompts)
    for side in sd.values():
        common &= set(side.prompts)
    ids = sorted(p for p in common if ar.prompts[p][1] > 0 and all(s.prompts[p][1] > 0 for s in sd.values()))
    if not ids:
        return [], {}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ids), size=(n_boot, len(ids)))
    ar_rel = _rates(ar, ids, idx)
    samples = {}
    for g, side in sd.items():
        point = side.speedup_over(ar)
        samples[g] = point * _rates(side, ids, idx) / ar_rel
    return ids, samples


def choose_draft_length(
    batch_size: int,
    ar: RunSide,
    sd: Mapping[int, RunSide],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> BatchChoice:
    """Best draft length by measured output-TPS speedup, its interval and the paired test."""
    if not sd:
        return BatchChoice(batch_size, (), None, None, notes=("no speculative run at this batch size",))
    if not ar.output_tps:
        return BatchChoice(batch_size, (), None, None, notes=("the drafter=none run has no output TPS",))
    ids, samples = paired_speedup_samples(ar, sd, n_boot=n_boot, seed=seed)
    notes: list[str] = []
    if not ids:
        notes.append("no prompt id is common to every run (no per-request rows?): no intervals, no paired test")
    points = []
    for g in sorted(sd):
        side = sd[g]
        ci = stats.percentile_interval(samples[g], level) if g in samples else None
        user = side.user_speedup
        if user is None and side.user_tps and ar.user_tps:
            user = side.user_tps / ar.user_tps
        points.append(DraftPoint(g, side.speedup_over(ar), ci, side.acceptance_length, user))
    if 0 < len(ids) < 5:
        notes.append(f"only {len(ids)} paired prompts: the bootstrap interval is coarse")
    ranked = sorted(points, key=lambda p: (-p.speedup, p.draft_length))
    best = ranked[0].draft_length
    runner = ranked[1].draft_length if len(ranked) > 1 else None
    if runner is None:
        return BatchChoice(batch_size, tuple(points), best, None, n_prompts=len(ids),
                           notes=(*notes, "one draft length only: nothing to compare"))
    delta = ranked[0].speedup - ranked[1].speedup
    if not ids:
        return BatchChoice(batch_size, tuple(points), best, runner, delta, n_prompts=0, notes=tuple(notes))
    d = samples[best] - samples[runner]
    ci = stats.percentile_interval(d, level)
    return BatchChoice(
        batch_size, tuple(points), best, runner, delta, ci, float(np.mean(d <= 0)),
        bool(ci is not None and ci[0] > 0), len(ids), tuple(notes),
    )


def overestimation_pct(real: float | None, random: float | None) -> float | None:
    """How much the random-token control overstates a metric: (random - real) / real x 100."""
    if real is None or random is None or real == 0:
        return None
    return (random - real) / real * 100.0
