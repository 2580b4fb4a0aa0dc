"""Figures for semantic-diversity selection (docs/selection.md): speed, memory, quality.

Not a pytest test (no test_ prefix): run it by hand,

    python benchmarks/bench_selection.py [--pool-embeddings emb.npy --pool pool.jsonl]

1. scale: N = 20,000 candidates, d = 384, k = 80; wall time, peak memory, objective of random
   sampling / greedy / greedy + LSR. BLAS is held to 2 threads (the target machine's 2 cores).
2. exactness: on N <= 16 the brute-force optimum is computable; how often greedy and
   greedy + LSR reach it, and by how much they miss when they do not.
3. with --pool-embeddings (from `speedbench select ... --save-embeddings`): the same gap on real
   MiniLM embeddings of a candidate pool, per category.

Synthetic embeddings imitate sentence embeddings: a direction every vector shares (so the mean
cosine is positive, ~0.17 here), topic clusters (so near-duplicates exist), and noise.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")  # before numpy loads its BLAS

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from pytest_speedbench.data.selection import (  # noqa: E402
    exhaustive_select,
    mean_pairwise_similarity,
    normalize_rows,
    random_select,
    select_diverse,
)


def synthetic(n: int, d: int, clusters: int, seed: int) -> np.ndarray:
    """float32 embeddings-like vectors (not normalized: selection does that, as in real use)."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(d)
    centers = rng.standard_normal((clusters, d))
    X = 0.6 * common + centers[rng.integers(clusters, size=n)] + 0.8 * rng.standard_normal((n, d))
    return X.astype(np.float32)


def bench_scale(n: int, d: int, k: int, repeats: int, seed: int) -> dict:
    X = synthetic(n, d, clusters=60, seed=seed)
    times, cpu = [], []
    for r in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        select_diverse(X, k, seed=seed + r)
        times.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    stages = {}
    started = time.perf_counter()
    Xn = normalize_rows(X)
    stages["normalize"] = time.perf_counter() - started
    started = time.perf_counter()
    select_diverse(Xn, k, seed=seed, normalize=False, refine=False)
    stages["greedy"] = time.perf_counter() - started
    tracemalloc.start()
    select_diverse(X, k, seed=seed)
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    randoms = [mean_pairwise_similarity(Xn, random_select(n, k, np.random.default_rng(seed + 100 + t))) for t in range(5)]
    runs = [select_diverse(Xn, k, seed=seed + r, normalize=False) for r in range(repeats)]
    return {
        "n": n, "d": d, "k": k, "repeats": repeats,
        "time_s_min": min(times), "time_s_median": statistics.median(times),
        "cpu_s_median": statistics.median(cpu), "load_avg_1min": os.getloadavg()[0],
        "stage_s": stages,
        "input_mib": X.nbytes / 2**20,
        "traced_peak_mib": traced_peak / 2**20,
        "max_rss_mib": rss_kib / 1024,
        "random_mean": float(np.mean(randoms)), "random_std": float(np.std(randoms)),
        "greedy": [mean_pairwise_similarity(Xn, r.greedy_indices) for r in runs],
        "greedy_lsr": [mean_pairwise_similarity(Xn, r.indices) for r in runs],
        "swaps": [r.swaps for r in runs],
    }


def gap_row(X: np.ndarray, k: int, seed: int) -> tuple[float, float, float]:
    """(greedy gap, greedy + LSR gap, optimum), in mean-pairwise-similarity units."""
    pairs = k * (k - 1)
    _, best = exhaustive_select(X, k)
    sel = select_diverse(X, k, seed=seed, normalize=False)
    return (sel.greedy_objective - best) / pairs, (sel.objective - best) / pairs, best / pairs


def bench_exact(sizes: list[int], seeds: int, d: int) -> list[dict]:
    rows = []
    for n in sizes:
        gaps_g, gaps_l = [], []
        for k in range(3, n // 2 + 1):
            for s in range(seeds):
                X = normalize_rows(synthetic(n, d, clusters=4, seed=1000 * n + 10 * k + s))
                g, lsr, _ = gap_row(X, k, seed=s)
                gaps_g.append(g)
                gaps_l.append(lsr)
        rows.append(summarize(f"N={n}, k=3..{n // 2}", gaps_g, gaps_l))
    return rows


def summarize(label: str, gaps_g: list[float], gaps_l: list[float]) -> dict:
    eps = 1e-12
    return {
        "instances": label, "count": len(gaps_g),
        "greedy_optimal": sum(g <= eps for g in gaps_g), "lsr_optimal": sum(g <= eps for g in gaps_l),
        "greedy_mean_gap": float(np.mean(gaps_g)), "greedy_max_gap": float(np.max(gaps_g)),
        "lsr_mean_gap": float(np.mean(gaps_l)), "lsr_max_gap": float(np.max(gaps_l)),
    }


def bench_pool(embeddings: Path, pool: Path, k: int, seed: int) -> list[dict]:
    """Per category of a real pool: the optimum and what the command's selection reached."""
    import zlib

    rows = [json.loads(line) for line in pool.read_text(encoding="utf-8").splitlines() if line.strip()]
    X = normalize_rows(np.load(embeddings))
    out = []
    for cat in sorted({r["category"] for r in rows}):
        idx = np.array([i for i, r in enumerate(rows) if r["category"] == cat])
        Xc = X[idx]
        # the same per-category stream as `speedbench select --seed`
        rng = np.random.default_rng([seed, zlib.crc32(cat.encode("utf-8")), 0])
        sel = select_diverse(Xc, k, seed=rng, normalize=False)
        _, best = exhaustive_select(Xc, k)
        pairs = k * (k - 1)
        out.append({"category": cat, "n": len(idx), "optimum": best / pairs,
                    "greedy": sel.greedy_objective / pairs, "greedy_lsr": sel.objective / pairs})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--k", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--exact-sizes", type=int, nargs="+", default=[10, 12, 14, 16])
    ap.add_argument("--exact-seeds", type=int, default=10)
    ap.add_argument("--pool-embeddings", type=Path)
    ap.add_argument("--pool", type=Path)
    ap.add_argument("--pool-k", type=int, default=8)
    ap.add_argument("--json", action="store_true", help="print raw figures as JSON")
    args = ap.parse_args()

    scale = bench_scale(args.n, args.d, args.k, args.repeats, args.seed)
    exact = bench_exact(args.exact_sizes, args.exact_seeds, args.d)
    pool = bench_pool(args.pool_embeddings, args.pool, args.pool_k, args.seed) if args.pool_embeddings else []
    if args.json:
        print(json.dumps({"scale": scale, "exact": exact, "pool": pool}, indent=2))
        return

    s = scale
    print(f"## Scale: N={s['n']}, d={s['d']}, k={s['k']}, BLAS threads={os.environ['OPENBLAS_NUM_THREADS']}\n")
    print(f"- wall time: min {s['time_s_min']:.2f} s, median {s['time_s_median']:.2f} s over {s['repeats']} seeds "
          f"(normalize {s['stage_s']['normalize']:.2f} s, greedy {s['stage_s']['greedy']:.2f} s); "
          f"CPU time median {s['cpu_s_median']:.2f} s; 1-min load average {s['load_avg_1min']:.1f} on {os.cpu_count()} cores")
    print(f"- memory: input {s['input_mib']:.1f} MiB (float32); tracemalloc peak {s['traced_peak_mib']:.1f} MiB; "
          f"process max RSS {s['max_rss_mib']:.0f} MiB")
    print(f"- swaps taken by LSR: {s['swaps']}\n")
    print("| method | mean pairwise cosine |\n|---|---:|")
    print(f"| random (mean of 5) | {s['random_mean']:.4f} ± {s['random_std']:.4f} |")
    print(f"| greedy | {np.mean(s['greedy']):.4f} (seeds: {', '.join(f'{v:.4f}' for v in s['greedy'])}) |")
    print(f"| greedy + LSR | {np.mean(s['greedy_lsr']):.4f} (seeds: {', '.join(f'{v:.4f}' for v in s['greedy_lsr'])}) |")

    print(f"\n## Gap to the brute-force optimum (d={args.d}, {args.exact_seeds} seeds per (N, k))\n")
    print("| instances | count | greedy optimal | greedy + LSR optimal | greedy gap mean / max | greedy + LSR gap mean / max |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in exact:
        print(f"| {r['instances']} | {r['count']} | {r['greedy_optimal']} | {r['lsr_optimal']} "
              f"| {r['greedy_mean_gap']:.5f} / {r['greedy_max_gap']:.5f} | {r['lsr_mean_gap']:.5f} / {r['lsr_max_gap']:.5f} |")
    if pool:
        print(f"\n## Bundled pool, real embeddings: k={args.pool_k} per category vs the optimum\n")
        print("| category | candidates | optimum | greedy | greedy + LSR |\n|---|---:|---:|---:|---:|")
        for r in pool:
            print(f"| {r['category']} | {r['n']} | {r['optimum']:.4f} | {r['greedy']:.4f} | {r['greedy_lsr']:.4f} |")


if __name__ == "__main__":
    main()
