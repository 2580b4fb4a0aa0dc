"""Semantic-diversity selection (data/selection.py) against brute force and its own contract."""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest

from pytest_speedbench.data.selection import (
    exhaustive_select,
    greedy_select,
    local_search,
    mean_pairwise_similarity,
    normalize_rows,
    pairwise_objective,
    random_select,
    select_diverse,
)


def embeddings(n: int, d: int, seed: int, clusters: int = 4) -> np.ndarray:
    """Unit vectors shaped like sentence embeddings: a shared direction, clusters, noise.

    Isotropic random vectors are nearly orthogonal and make the problem trivial; this shape
    makes near-duplicates and a positive mean similarity, as real embeddings have."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d))
    X = 0.8 * rng.standard_normal(d) + centers[rng.integers(clusters, size=n)] + 0.6 * rng.standard_normal((n, d))
    return normalize_rows(X)


def gram_objective(X: np.ndarray, subset) -> float:
    """L(S) straight from the definition, independent of the |sum|^2 identity used in the code."""
    idx = list(subset)
    return float(sum(X[i] @ X[j] for i in idx for j in idx if i != j))


def improving_swaps(X: np.ndarray, subset, tol: float = 1e-9) -> list[tuple[int, int, float]]:
    """Every (out, in, delta) swap that lowers L, by recomputing L for each swapped set."""
    chosen = set(int(i) for i in subset)
    base = gram_objective(X, chosen)
    found = []
    for out in chosen:
        for inn in set(range(len(X))) - chosen:
            delta = gram_objective(X, (chosen - {out}) | {inn}) - base
            if delta < -tol:
                found.append((out, inn, delta))
    return found


def test_objective_matches_definition() -> None:
    X = embeddings(9, 5, seed=1)
    subset = [0, 3, 4, 8]
    assert pairwise_objective(X, subset) == pytest.approx(gram_objective(X, subset), abs=1e-12)
    assert mean_pairwise_similarity(X, subset) == pytest.approx(gram_objective(X, subset) / 12, abs=1e-12)


def test_greedy_matches_naive_loop() -> None:
    """The vectorized running sums pick exactly what recomputing every sum from scratch picks."""
    X = embeddings(40, 6, seed=2)
    picked, first = greedy_select(X, 7, np.random.default_rng(5))
    assert picked[0] == first
    naive = [first]
    for _ in range(6):
        rest = [c for c in range(40) if c not in naive]
        naive.append(min(rest, key=lambda c: (sum(X[c] @ X[j] for j in naive), c)))
    assert picked.tolist() == naive


@pytest.mark.parametrize("seed", range(6))
def test_local_search_leaves_no_improving_swap(seed: int) -> None:
    X = embeddings(14, 4, seed=seed)
    start = np.arange(5)  # a deliberately arbitrary start, not the greedy one
    result = local_search(X, start)
    assert improving_swaps(X, result.indices) == []
    assert result.objective == pytest.approx(gram_objective(X, result.indices), abs=1e-9)
    assert result.objective <= gram_objective(X, start) + 1e-12


def test_against_brute_force_on_small_instances() -> None:
    """Never below the optimum (sanity), never worse than greedy, and on these 60 instances
    nearly always the optimum itself; the observed rate is a regression guard."""
    optimal, gaps = 0, []
    cases = [(n, k, s) for n in (8, 10, 12) for k in (2, 3, 4, 5, 6) for s in range(4)]
    for n, k, s in cases:
        X = embeddings(n, 5, seed=100 + s + 10 * n + k)
        best_idx, best = exhaustive_select(X, k)
        assert best == pytest.approx(gram_objective(X, best_idx), abs=1e-9)
        sel = select_diverse(X, k, seed=s, normalize=False)
        assert sel.objective >= best - 1e-9
        assert sel.objective <= sel.greedy_objective + 1e-12
        assert improving_swaps(X, sel.indices) == []
        gaps.append(sel.objective - best)
        optimal += sel.objective <= best + 1e-9
    assert optimal / len(cases) >= 0.9, f"optimal on {optimal}/{len(cases)}; gaps {sorted(gaps)[-5:]}"


def test_exhaustive_finds_planted_optimum_and_so_does_lsr() -> None:
    """Four orthogonal directions hidden among near-copies of one of them. All entries are
    non-negative, so every similarity is >= 0 and L = 0 only for the four basis vectors."""
    rng = np.random.default_rng(0)
    basis = np.eye(6)[:4]
    copies = basis[0] + 0.05 * np.abs(rng.standard_normal((6, 6)))
    X = normalize_rows(np.vstack([copies, basis]))
    best_idx, best = exhaustive_select(X, 4)
    assert sorted(best_idx.tolist()) == [6, 7, 8, 9] and best == pytest.approx(0, abs=1e-12)
    for seed in range(5):  # whichever point greedy starts from
        assert select_diverse(X, 4, seed=seed).objective == pytest.approx(0, abs=1e-9)


def test_local_search_improves_on_greedy_somewhere() -> None:
    """LSR is not a no-op: on some seed greedy stops short and swaps lower the objective."""
    gains = [
        (r.greedy_objective - r.objective, r.swaps)
        for r in (select_diverse(embeddings(200, 8, seed=s), 15, seed=s) for s in range(5))
    ]
    assert any(g > 1e-6 and swaps > 0 for g, swaps in gains), gains


def test_cached_and_streamed_searches_agree() -> None:
    X = embeddings(300, 6, seed=3)
    start = np.arange(10)  # k > d, where the default streams the cross-similarities
    a = local_search(X, start, cache_cross=True)
    b = local_search(X, start, cache_cross=False)
    assert a.indices.tolist() == b.indices.tolist() and a.swaps == b.swaps > 0
    assert a.objective == pytest.approx(b.objective, abs=1e-9)


def test_deterministic_under_seed() -> None:
    X = embeddings(500, 16, seed=4)
    a, b = select_diverse(X, 20, seed=7), select_diverse(X, 20, seed=7)
    assert a.indices.tolist() == b.indices.tolist() and a.objective == b.objective
    starts = {select_diverse(X, 20, seed=s).seed_point for s in range(5)}
    assert len(starts) > 1  # the seed really drives the random start


def test_scale_invariant() -> None:
    """Cosine similarity ignores length: scaling rows must not change the selection."""
    X = embeddings(100, 8, seed=5)
    scales = np.random.default_rng(0).uniform(0.1, 10, size=(100, 1))
    assert select_diverse(X, 12, seed=1).indices.tolist() == select_diverse(X * scales, 12, seed=1).indices.tolist()


@pytest.mark.parametrize("k", [10, 40])  # k <= d caches the N x k block; k > d streams it
def test_memory_is_linear_in_n(k: int) -> None:
    """No N x N matrix: with N = 5000 one would be 200 MB; the whole run must stay far below."""
    n, d = 5000, 16
    X = embeddings(n, d, seed=6)
    tracemalloc.start()
    try:
        select_diverse(X, k, seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * X.nbytes + 8 * n * k * 8, f"peak {peak / 2**20:.1f} MiB"
    assert peak < (n * n * 8) / 20


def test_edge_cases_and_errors() -> None:
    X = embeddings(6, 3, seed=7)
    assert select_diverse(X, 0).indices.tolist() == []
    assert select_diverse(X, 6).indices.tolist() == list(range(6))
    one = select_diverse(X, 1, seed=3)
    assert one.indices.tolist() == [one.seed_point] and one.objective == 0
    with pytest.raises(ValueError, match="k=7 of 6"):
        select_diverse(X, 7)
    with pytest.raises(ValueError, match="zero-length rows \\[1\\]"):
        normalize_rows(np.array([[1.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="NaN"):
        normalize_rows(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="distinct"):
        local_search(X, [1, 1])
    with pytest.raises(ValueError, match="exceeds max_subsets"):
        exhaustive_select(embeddings(40, 3, seed=0), 20)


def test_random_select_is_uniform_subset() -> None:
    rng = np.random.default_rng(0)
    counts = np.zeros(10)
    for _ in range(2000):
        pick = random_select(10, 3, rng)
        assert len(set(pick.tolist())) == 3
        counts[pick] += 1
    assert counts.min() > 0.8 * 600 and counts.max() < 1.2 * 600


def test_brute_force_helper_matches_itertools() -> None:
    X = embeddings(9, 4, seed=8)
    expect = min(itertools.combinations(range(9), 3), key=lambda s: gram_objective(X, s))
    got, value = exhaustive_select(X, 3)
    assert tuple(got.tolist()) == expect and value == pytest.approx(gram_objective(X, expect))
