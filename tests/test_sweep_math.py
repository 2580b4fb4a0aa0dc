"""Optimal draft length per batch size: paired bootstrap over prompts on synthetic runs."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_speedbench.analysis.sweep import (
    RunSide, choose_draft_length, overestimation_pct, paired_speedup_samples, prompt_totals,
)


def side(e2e: dict[str, float], tokens: float = 32.0, al: float | None = None) -> RunSide:
    """A run whose prompts each produced `tokens` tokens in e2e[p] seconds (sequential window)."""
    prompts = {p: (tokens, t) for p, t in e2e.items()}
    return RunSide(sum(tokens for _ in e2e) / sum(e2e.values()), prompts, al)


def heterogeneous(n: int, seed: int = 1) -> dict[str, float]:
    """Prompts whose E2E differ by up to 10x (hard and easy prompts)."""
    rng = np.random.default_rng(seed)
    return {f"p{i}": float(t) for i, t in enumerate(rng.uniform(0.5, 5.0, n))}


def test_prompt_totals_sums_turns_and_skips_rows_without_e2e() -> None:
    rows = [
        {"id": "a", "tokens": 10, "e2e_s": 1.0}, {"id": "a", "tokens": 5, "e2e_s": 0.5},
        {"id": "b", "tokens": 7, "e2e_s": None}, {"id": "c", "tokens": 3, "e2e_s": 0.25},
    ]
    assert prompt_totals(rows) == {"a": (15.0, 1.5), "c": (3.0, 0.25)}


def test_clear_winner_is_chosen_and_beats_the_runner_up() -> None:
    base = heterogeneous(40)
    ar = side(base)
    sd = {g: side({p: t / f for p, t in base.items()}) for g, f in ((1, 1.3), (2, 1.6), (3, 1.45))}
    choice = choose_draft_length(1, ar, sd, n_boot=1000)
    assert choice.best == 2 and choice.runner_up == 3
    best = choice.point(2)
    assert best is not None and best.speedup == pytest.approx(1.6)
    assert best.ci95[0] <= 1.6 <= best.ci95[1]
    assert choice.delta == pytest.approx(0.15)
    assert choice.beats is True and choice.p_value < 0.05
    assert choice.n_prompts == 40


def test_pairing_detects_a_small_consistent_gain_that_prompt_spread_would_hide() -> None:
    base = heterogeneous(30)
    rng = np.random.default_rng(3)
    ar = side(base)
    g2 = {p: t / 1.50 * rng.uniform(0.995, 1.005) for p, t in base.items()}
    g3 = {p: t / 1.53 * rng.uniform(0.995, 1.005) for p, t in base.items()}
    choice = choose_draft_length(4, ar, {2: side(g2), 3: side(g3)}, n_boot=2000)
    assert choice.best == 3 and choice.beats is True
    # unpaired: every run resampled on its own draw, the 2% gap drowns in the 10x prompt spread
    rng2 = np.random.default_rng(11)

    def unpaired(run: RunSide) -> np.ndarray:
        tok, e2e = (np.array([v[i] for v in run.prompts.values()]) for i in (0, 1))
        idx = rng2.integers(0, tok.size, size=(2000, tok.size))
        return tok[idx].sum(axis=1) / e2e[idx].sum(axis=1)

    ar_rate = unpaired(ar)
    lo = np.quantile(unpaired(side(g3)) / ar_rate - unpaired(side(g2)) / unpaired(ar), 0.025)
    assert lo < 0 < choice.delta_ci95[0]


def test_a_tie_does_not_beat() -> None:
    base = heterogeneous(30)
    rng = np.random.default_rng(5)
    sd = {g: side({p: t / 1.4 * rng.uniform(0.8, 1.2) for p, t in base.items()}) for g in (1, 2)}
    choice = choose_draft_length(1, side(base), sd, n_boot=1000)
    assert choice.beats is False
    assert choice.delta_ci95[0] <= 0 <= choice.delta_ci95[1] or choice.p_value > 0.025


def test_pairs_only_common_prompts_and_says_so_when_none() -> None:
    ar = side({"a": 1.0, "b": 2.0})
    sd = {1: side({"a": 0.5, "b": 1.0}), 2: side({"c": 0.5})}
    choice = choose_draft_length(1, ar, sd)
    assert choice.n_prompts == 0 and choice.beats is None and choice.delta_ci95 is None
    assert any("no prompt id is common" in n for n in choice.notes)
    ids, _ = paired_speedup_samples(ar, {1: sd[1]})
    assert ids == ["a", "b"]


def test_single_draft_length_has_no_comparison() -> None:
    base = heterogeneous(8)
    choice = choose_draft_length(1, side(base), {3: side({p: t / 2 for p, t in base.items()})})
    assert choice.best == 3 and choice.runner_up is None and choice.beats is None
    assert choice.point(3).ci95 is not None


def test_overestimation_pct() -> None:
    assert overestimation_pct(2.0, 2.46) == pytest.approx(23.0)
    assert overestimation_pct(2.0, 1.5) == pytest.approx(-25.0)
    assert overestimation_pct(None, 1.0) is None and overestimation_pct(0.0, 1.0) is None


def test_few_paired_prompts_are_flagged() -> None:
    base = {"a": 1.0, "b": 2.0, "c": 1.5}
    choice = choose_draft_length(1, side(base), {3: side({p: t / 2 for p, t in base.items()})}, n_boot=200)
    assert any("only 3 paired prompts" in n for n in choice.notes)


def test_a_recorded_speedup_is_the_point_and_the_bootstrap_rescales_it() -> None:
    base = heterogeneous(20)
    sd = side({p: t / 1.5 for p, t in base.items()})
    recorded = RunSide(sd.output_tps, sd.prompts, speedup=1.2, user_speedup=1.3)  # e.g. interleaved rounds
    choice = choose_draft_length(1, side(base), {2: recorded}, n_boot=500)
    point = choice.point(2)
    assert point.speedup == 1.2 and point.user_tps_speedup == 1.3
    assert point.ci95[0] <= 1.2 <= point.ci95[1]
