"""Summary statistics and bootstrap confidence intervals (pure numpy, no I/O).

Benchmark runs are small samples of skewed distributions (a few hundred requests, long latency
tails), so intervals come from the percentile bootstrap over requests rather than from a
normal approximation. Resampling is vectorized: all resamples of a batch are drawn as one
index matrix and the statistic is evaluated along axis 1, never in a Python loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# Cap on elements of one resample index matrix (rows x sample size) so memory stays bounded
# (~32 MB of int64) whatever the run size; larger bootstraps are done in batches.
_MAX_BATCH_ELEMENTS = 4_000_000

SUMMARY_KEYS = ("mean", "std", "p50", "p90", "p99")

# A vectorized estimator: receives one (n_boot, n) array per input column and returns (n_boot,).
Estimator = Callable[..., np.ndarray]


def finite(values: Sequence[float | None] | np.ndarray) -> np.ndarray:
    """The finite values of `values` as a float array (None, NaN and inf dropped)."""
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    return arr[np.isfinite(arr)]


def summarize(values: Sequence[float | None] | np.ndarray) -> dict[str, float | None]:
    """mean, std, p50, p90, p99 of `values` (non-finite values ignored); all None when empty.

    std is the sample standard deviation (ddof=1, like pytest-benchmark's stddev), 0.0 for a
    single value. Percentiles use numpy's default linear interpolation.
    """
    arr = finite(values)
    if arr.size == 0:
        return {key: None for key in SUMMARY_KEYS}
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
    }


def bootstrap_samples(
    columns: Sequence[Sequence[float] | np.ndarray],
    estimator: Estimator,
    *,
    n_boot: int = 1000,
    rng: np.random.Generator,
) -> np.ndarray:
    """`n_boot` bootstrap replicates of `estimator` over paired `columns` (resampled by row).

    All columns must have the same length n >= 1; row i of every column is drawn together, so
    per-request quantities (e.g. AL and step latency of one request) stay paired.
    """
    cols = [np.asarray(c, dtype=float) for c in columns]
    n = cols[0].size
    if n == 0 or any(c.size != n for c in cols):
        raise ValueError(f"bootstrap columns must be non-empty and equally long, got {[c.size for c in cols]}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    batch = max(1, min(n_boot, _MAX_BATCH_ELEMENTS // n))
    out = np.empty(n_boot, dtype=float)
    for start in range(0, n_boot, batch):
        rows = min(batch, n_boot - start)
        idx = rng.integers(0, n, size=(rows, n))
        out[start : start + rows] = estimator(*(c[idx] for c in cols))
    return out


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> list[float] | None:
    """[lo, hi] percentile interval of the finite bootstrap `samples`; None if none is finite."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return None
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(s, [alpha, 1.0 - alpha])
    return [float(lo), float(hi)]


def _along_rows(statistic: Callable[..., np.ndarray]) -> Estimator:
    """Wrap a numpy reduction (np.mean, np.median, ...) to apply along axis 1."""

    def estimator(resampled: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(statistic(resampled, axis=1), dtype=float)
        except TypeError:  # a statistic without an `axis` argument
            return np.apply_along_axis(statistic, 1, resampled).astype(float)

    return estimator


def bootstrap_ci(
    values: Sequence[float | None] | np.ndarray,
    statistic: Callable[..., np.ndarray] = np.mean,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> list[float] | None:
    """Percentile-bootstrap `level` interval [lo, hi] of `statistic` over `values`.

    None when there is no finite value; [v, v] for a single value (no spread to resample).
    """
    arr = finite(values)
    if arr.size == 0:
        return None
    rng = np.random.default_rng(seed)
    samples = bootstrap_samples([arr], _along_rows(statistic), n_boot=n_boot, rng=rng)
    return percentile_interval(samples, level)


def bootstrap_ratio_ci(
    num_values: Sequence[float | None] | np.ndarray,
    den_values: Sequence[float | None] | np.ndarray,
    statistic: Callable[..., np.ndarray] = np.mean,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> list[float] | None:
    """Interval of statistic(num) / statistic(den) for two independent samples (a speedup).

    Each sample is resampled on its own (they come from different runs, no pairing), and
    replicates with a zero denominator are dropped. None when either sample is empty.
    """
    num, den = finite(num_values), finite(den_values)
    if num.size == 0 or den.size == 0:
        return None
    rng = np.random.default_rng(seed)
    stat = _along_rows(statistic)
    top = bootstrap_samples([num], stat, n_boot=n_boot, rng=rng)
    bottom = bootstrap_samples([den], stat, n_boot=n_boot, rng=rng)
    with np.errstate(divide="ignore", invalid="ignore"):
        return percentile_interval(top / bottom, level)
