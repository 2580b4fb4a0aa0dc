"""Semantic-diversity selection: choose k of N embedded prompts with the least mutual similarity.

SPEED-Bench picks each category's prompts to minimize

    L(S) = sum over i != j in S of x_i . x_j        (rows of X are unit vectors)

i.e. the sum of pairwise cosine similarities, counting ordered pairs. The published method is a
greedy pass followed by local-search refinement (LSR); no implementation was released, so this
module is the reference one. Everything here is pure numpy: no I/O, no models.

Why it is cheap: with T = sum of the selected vectors, the summed similarity of any candidate v
to the selected set is x_v . T, so one length-N vector g = X @ T holds it for every candidate at
once. Then L(S) = |T|^2 - k, a greedy step is argmin g, and swapping selected s for unselected c
changes L by

    delta(s, c) = 2 * (g_c - x_c . x_s) - 2 * (g_s - x_s . x_s).

Only the N x k cross-similarities x_c . x_s are needed, never the N x N Gram matrix: a full swap
search costs k*N dot products, and after an accepted swap only one column of the cache and g
are recomputed (N dot products; g is the row sums of the cache). Memory is O(N * d) for X
plus O(N * k) for that cache, which is only kept when k <= d (otherwise it is recomputed block
by block for each search), so the working set stays O(N * d).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

#: Elements per temporary block when scanning swap deltas (16 MiB of float64).
_BLOCK_ELEMENTS = 1 << 21

#: A swap must lower L by more than this to be taken. With float64 arithmetic on unit vectors the
#: rounding error of one delta is ~1e-13, so this rejects noise without missing real gains.
DEFAULT_TOL = 1e-9


@dataclass(frozen=True)
class LocalSearchResult:
    """A 1-swap local optimum: no swap of one member for one non-member lowers `objective`."""

    indices: np.ndarray  # selected row numbers, sorted
    objective: float  # L(S) of `indices`
    swaps: int  # improving swaps taken


@dataclass(frozen=True)
class Selection:
    """Result of `select_diverse`: the final set and the greedy stage it started from."""

    indices: np.ndarray  # sorted row numbers of the final set
    objective: float  # L(S) of the final set
    greedy_indices: np.ndarray  # sorted row numbers after the greedy stage
    greedy_objective: float
    swaps: int  # improving swaps taken by local search (0 when refine=False)
    seed_point: int  # the random first point of the greedy stage


def normalize_rows(X: np.ndarray) -> np.ndarray:
    """Return X as float64 with unit-length rows, so dot products are cosine similarities.

    float64 keeps the swap deltas exact enough that the stopping rule (no swap gains more than
    `DEFAULT_TOL`) is a real property of the result, not of rounding.
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (rows x dims), got shape {X.shape}")
    X = X.astype(np.float64, copy=True)
    if not np.all(np.isfinite(X)):
        bad = np.flatnonzero(~np.all(np.isfinite(X), axis=1))
        raise ValueError(f"embeddings contain NaN or inf in rows {bad[:10].tolist()}")
    norms = np.sqrt(np.einsum("ij,ij->i", X, X))  # np.linalg.norm would allocate an N x d temporary
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise ValueError(f"embeddings have zero-length rows {zero[:10].tolist()}; cosine is undefined")
    X /= norms[:, None]
    return X


def pairwise_objective(X: np.ndarray, indices: np.ndarray | list[int]) -> float:
    """L(S) = sum over ordered pairs i != j in S of x_i . x_j, computed as |sum x|^2 - sum |x|^2."""
    S = X[np.asarray(indices, dtype=np.intp)]
    total = S.sum(axis=0)
    return float(total @ total - np.einsum("ij,ij->", S, S))


def mean_pairwise_similarity(X: np.ndarray, indices: np.ndarray | list[int]) -> float:
    """Average cosine similarity over the k(k-1) ordered pairs of S (the paper's reported figure)."""
    k = len(indices)
    if k < 2:
        return float("nan")
    return pairwise_objective(X, indices) / (k * (k - 1))


def _check_k(n: int, k: int) -> None:
    if not 0 <= k <= n:
        raise ValueError(f"cannot select k={k} of {n} candidates; k must be in 0..{n}")


def random_select(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct row numbers drawn uniformly: the baseline of the paper's ablation."""
    _check_k(n, k)
    return np.sort(rng.choice(n, size=k, replace=False))


def greedy_select(X: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Greedy stage: a random first point, then repeatedly the candidate least similar in sum.

    Returns (row numbers in the order they were picked, the random first point). Ties go to the
    lowest row number, so the result depends only on X, k and the generator's state.
    Cost: k matrix-vector products, O(k N d) time, O(N) extra memory.
    """
    n = X.shape[0]
    _check_k(n, k)
    if k == 0:
        return np.empty(0, dtype=np.intp), -1
    first = int(rng.integers(n))
    picked = np.empty(k, dtype=np.intp)
    picked[0] = first
    taken = np.zeros(n, dtype=bool)
    taken[first] = True
    sums = X @ X[first]  # summed similarity of every candidate to the selected set
    for step in range(1, k):
        nxt = int(np.argmin(np.where(taken, np.inf, sums)))
        picked[step] = nxt
        taken[nxt] = True
        sums += X @ X[nxt]
    return picked, first


def local_search(
    X: np.ndarray,
    indices: np.ndarray | list[int],
    *,
    tol: float = DEFAULT_TOL,
    max_swaps: int | None = None,
    cache_cross: bool | None = None,
) -> LocalSearchResult:
    """Refine a selection by best-improvement 1-swaps until no swap lowers L by more than `tol`.

    Each round finds the single (member, non-member) swap with the most negative delta over all
    k * (N - k) pairs and takes it. Best-improvement rather than first-improvement because the
    search is one vectorized argmin over the cached N x k block either way, so taking the largest
    gain costs nothing extra, needs fewer swaps, and does not depend on scan order.

    `cache_cross` keeps the N x k cross-similarity block between rounds (default: when k <= d,
    so memory stays O(N d)); without it each round recomputes the block in row chunks. Both give
    identical results. `max_swaps` bounds the work (None: until a local optimum).
    """
    n, d = X.shape
    sel = np.array(indices, dtype=np.intp)  # slot -> row; slots keep their position on swap
    k = sel.size
    _check_k(n, k)
    if np.unique(sel).size != k:
        raise ValueError("indices must be distinct")
    norms2 = np.einsum("ij,ij->i", X, X)
    in_sel = np.zeros(n, dtype=bool)
    in_sel[sel] = True
    total = X[sel].sum(axis=0)
    objective = float(total @ total - norms2[sel].sum())
    if k == 0 or k == n:
        return LocalSearchResult(np.sort(sel), objective, 0)

    if cache_cross is None:
        cache_cross = k <= d
    cross = X @ X[sel].T if cache_cross else None
    # g_v = x_v . T: summed similarity of each row to the selected set
    g = cross.sum(axis=1) if cross is not None else X @ total
    block = max(1, min(n, _BLOCK_ELEMENTS // k))

    swaps = 0
    while max_swaps is None or swaps < max_swaps:
        own = g[sel] - norms2[sel]  # sum_s: similarity of each member to the other members
        best_val, best_c, best_slot = np.inf, -1, -1
        sel_vectors = None if cache_cross else X[sel].T
        for start in range(0, n, block):
            stop = min(n, start + block)
            part = cross[start:stop] if cross is not None else X[start:stop] @ sel_vectors
            # half of delta(s, c) for every row c of this block and every slot s
            half = g[start:stop, None] - part
            half -= own[None, :]
            half[in_sel[start:stop]] = np.inf  # members cannot be added again
            flat = int(np.argmin(half))
            row, slot = divmod(flat, k)
            if half[row, slot] < best_val:  # strict: earlier rows win ties, as one argmin would
                best_val, best_c, best_slot = float(half[row, slot]), start + row, slot
        delta = 2.0 * best_val
        if not delta < -tol:
            break
        out = int(sel[best_slot])
        sel[best_slot] = best_c
        in_sel[out] = False
        in_sel[best_c] = True
        total = X[sel].sum(axis=0)  # re-summed, not updated, so no rounding drift builds up
        if cross is not None:
            cross[:, best_slot] = X @ X[best_c]
            g = cross.sum(axis=1)  # g_v = sum over slots of x_v . x_s: O(N k), no pass over X
        else:
            g = X @ total
        objective = float(total @ total - norms2[sel].sum())
        swaps += 1
    return LocalSearchResult(np.sort(sel), objective, swaps)


def select_diverse(
    X: np.ndarray,
    k: int,
    *,
    seed: int | np.random.Generator | None = 0,
    refine: bool = True,
    normalize: bool = True,
    tol: float = DEFAULT_TOL,
) -> Selection:
    """SPEED-Bench's selection: greedy start from a random point, then local-search refinement.

    `X` is N x d embeddings (normalized here unless `normalize=False`, in which case rows must
    already be float64 unit vectors). The same seed gives the same selection.
    """
    if normalize:
        X = normalize_rows(X)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    picked, first = greedy_select(X, k, rng)
    greedy_objective = pairwise_objective(X, picked)
    if refine:
        result = local_search(X, picked, tol=tol)
        final, objective, swaps = result.indices, result.objective, result.swaps
    else:
        final, objective, swaps = np.sort(picked), greedy_objective, 0
    return Selection(
        indices=final,
        objective=objective,
        greedy_indices=np.sort(picked),
        greedy_objective=greedy_objective,
        swaps=swaps,
        seed_point=first,
    )


def exhaustive_select(X: np.ndarray, k: int, *, max_subsets: int = 200_000) -> tuple[np.ndarray, float]:
    """The exact minimizer of L over all k-subsets, for checking the heuristic on small N.

    Uses the N x N Gram matrix, so it is only for tiny instances; refuses more than
    `max_subsets` subsets rather than running for hours. Ties go to the lexicographically first.
    """
    n = X.shape[0]
    _check_k(n, k)
    count = math.comb(n, k)
    if count > max_subsets:
        raise ValueError(f"C({n}, {k}) = {count} subsets exceeds max_subsets={max_subsets}")
    gram = X @ X.T
    np.fill_diagonal(gram, 0.0)
    combos = np.array(list(itertools.combinations(range(n), k)), dtype=np.intp).reshape(count, k)
    values = gram[combos[:, :, None], combos[:, None, :]].sum(axis=(1, 2))
    best = int(np.argmin(values))
    return combos[best].copy(), float(values[best])
