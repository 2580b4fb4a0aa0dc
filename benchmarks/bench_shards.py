"""How evenly `--speedbench-shard` splits realistic matrices: start groups, and the most
expensive shard over the mean for several shard counts (the cost model's units; no engine runs).

    python benchmarks/bench_shards.py [--num-prompts 80] [--output-len 256]

Prints one row per (matrix, grouping, N): groups, max/mean, and the bound the partition
guarantees (settings/partition.py's balance_bound over the mean). Groupings: launched engines
kept whole (`--speedbench-shard-by=engine`), launched engines by twin pairs (`pair`, each with
its engine starts in its cost), attached servers (twin pairs, nothing started).
"""

from __future__ import annotations

import argparse
import time

from pytest_speedbench.settings.matrix import BUCKETS, expand
from pytest_speedbench.settings.partition import Workload, balance_bound, matrix_costs, partition, start_groups

MATRICES = {
    # SPEED-Bench's full run on two engines: every bucket, four batch sizes, two SD drafters
    "full: vllm+sglang, none/eagle3/ngram, qual+5 buckets, bs 1/4/16/64": dict(
        engines=["vllm", "sglang"], drafters=["none", "eagle3", "ngram"], splits=["qualitative", "throughput"],
        buckets=list(BUCKETS), batch_sizes=[1, 4, 16, 64], temperatures=[0.0]),
    # a draft-length sweep: one engine instance per (drafter, gamma)
    "sweep: vllm eagle3 g1-5, throughput 1k/8k, bs 1/8/32, t 0/0.7": dict(
        engines=["vllm"], drafters=["none", "eagle3"], splits=["throughput"], buckets=["1k", "8k"],
        batch_sizes=[1, 8, 32], temperatures=[0.0, 0.7], draft_lengths=[1, 2, 3, 4, 5]),
    # the nightly example: one engine, qualitative and two buckets
    "nightly: sglang none/eagle3, qual+1k/8k, bs 1/4/16/64": dict(
        engines=["sglang"], drafters=["none", "eagle3"], splits=["qualitative", "throughput"],
        buckets=["1k", "8k"], batch_sizes=[1, 4, 16, 64], temperatures=[0.0]),
}


def key(case):  # the session's engine key: one start per (engine, drafter, gamma)
    return f"{case.engine}-{case.drafter}" + ("" if case.draft_length is None else f"-g{case.draft_length}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-prompts", type=int, default=80)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    load = Workload(args.num_prompts, 0, args.output_len, args.rounds, warmup=1)
    print(f"{'matrix':66} {'groups of':8} {'cases':>5} {'groups':>6} {'N':>3} {'max/mean':>8} {'bound/mean':>10} {'ms':>6}")
    for name, spec in MATRICES.items():
        cases = list(expand(**spec).cases)
        costs = matrix_costs(cases, load)
        for launched, whole, label in ((True, True, "engine"), (True, False, "pair"), (False, False, "attached")):
            groups = start_groups(cases, key, launched=launched, costs=costs, whole_instances=whole)
            for n in (2, 3, 4, 8, 16):
                start = time.perf_counter()
                plan = partition(groups, n)
                took = (time.perf_counter() - start) * 1000
                mean = sum(plan.cost(k) for k in range(1, n + 1)) / n
                print(f"{name:66} {label:8} {len(cases):5} {len(groups):6} {n:3} "
                      f"{plan.imbalance():8.2f} {balance_bound(groups, n) / mean:10.2f} {took:6.1f}")


if __name__ == "__main__":
    main()
