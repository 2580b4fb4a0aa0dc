"""`speedbench select`: pick K semantically diverse prompts per category from a candidate pool.

This is how a Qualitative-style split is built: embed every candidate, then per category run
greedy + local-search selection (`data.selection`, `data.candidates`) and write the chosen rows in
the SPEED-Bench schema. The printed table repeats the paper's ablation for this pool (mean
pairwise cosine similarity of random sampling, greedy only, and greedy + LSR), so a user sees
what the selection bought.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pytest_speedbench.commands import command
from pytest_speedbench.data.candidates import (
    TURN_MODES, format_table, prompt_text, read_candidates, select_per_category, write_jsonl,
)
from pytest_speedbench.data.embedders import DEFAULT_EMBEDDER, make_embedder
from pytest_speedbench.errors import UsageError, bad_value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = command(subparsers, "select", help="pick K semantically diverse prompts per category (greedy + local search)",
                run=run, description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, type=Path, help="candidate rows (.jsonl or .parquet, SPEED-Bench columns)")
    p.add_argument("--per-category", required=True, type=int, metavar="K", help="prompts to keep per category")
    p.add_argument("--out", required=True, type=Path, help="where to write the selected rows (.jsonl)")
    p.add_argument("--embeddings", type=Path, help="precomputed .npy embeddings, row i for input row i")
    p.add_argument(
        "--embedder",
        default=DEFAULT_EMBEDDER,
        help="minilm (default, offline), openai[:text-embedding-3-small|large], st:<model path or name>",
    )
    p.add_argument("--save-embeddings", type=Path, metavar="FILE.npy",
                   help="also save the input's embeddings, to rerun later with --embeddings")
    p.add_argument("--turns", choices=TURN_MODES, default="all", help="embed all turns joined (default) or the first")
    p.add_argument("--seed", type=int, default=0, help="seed of the greedy start and the random baseline")
    p.add_argument("--random-trials", type=int, default=5, help="random samples averaged for the baseline")
    p.add_argument("--json", action="store_true", help="print the ablation as JSON")


def run(args: argparse.Namespace) -> int:
    rows = read_candidates(args.input)
    if not rows:
        raise UsageError(f"input {str(args.input)!r} has no rows")
    if args.out.suffix != ".jsonl":
        raise bad_value("output format", args.out.suffix or str(args.out), (".jsonl",))
    embedder = make_embedder(args.embedder, embeddings=args.embeddings)
    started = time.perf_counter()
    vectors = embedder.embed([prompt_text(row, args.turns) for row in rows])
    embed_s = time.perf_counter() - started
    if args.save_embeddings is not None:
        if args.save_embeddings.suffix != ".npy":
            raise bad_value("embeddings output format", args.save_embeddings.suffix, (".npy",))
        args.save_embeddings.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.save_embeddings, np.asarray(vectors, dtype=np.float32))
    try:
        chosen, stats = select_per_category(
            rows, vectors, args.per_category, seed=args.seed, random_trials=args.random_trials
        )
    except ValueError as exc:  # bad embeddings (NaN, zero rows) surface as usage errors
        raise UsageError(str(exc)) from None
    select_s = time.perf_counter() - started - embed_s
    write_jsonl(args.out, chosen)
    if args.json:
        report = {
            "input": str(args.input),
            "output": str(args.out),
            "embedder": embedder.name,
            "turns": args.turns,
            "seed": args.seed,
            "per_category": args.per_category,
            "random_trials": args.random_trials,
            "embed_s": round(embed_s, 3),
            "select_s": round(select_s, 3),
            "categories": [asdict(s) for s in stats],
        }
        print(json.dumps(report, indent=2))
    else:
        print(f"mean pairwise cosine similarity (lower = more diverse); embedder {embedder.name}, seed {args.seed}")
        print(format_table(stats, args.random_trials))
        print(
            f"wrote {len(chosen)} rows to {args.out} (embedding {embed_s:.1f} s, selection {select_s:.2f} s)",
            file=sys.stderr,
        )
    return 0
