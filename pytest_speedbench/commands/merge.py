"""`speedbench merge SHARD.json... -o RUN.json`: one run from the results of `--speedbench-shard=K/N` jobs.

Shards must come from one plan, commit and settings; a missing shard or a case in two shards
is an error (exit 1) naming it. `--allow-missing` writes the run anyway and records the gap, so
`speedbench compare BASE RUN.json --fail ...` fails naming the shard.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pytest_speedbench.commands import results_command
from pytest_speedbench.errors import UsageError


def run(args: argparse.Namespace) -> int:
    from pytest_speedbench.results.document import Storage, write_atomic
    from pytest_speedbench.results.export import load_runs
    from pytest_speedbench.results.merge import merge_shards

    if not args.output and not args.save:
        raise UsageError("where to? give -o RUN.json (and/or --save to number it in --storage)")
    runs = load_runs(args.results, args.storage)
    merged = merge_shards([(str(r.path), r.doc) for r in runs], allow_missing=args.allow_missing,
                          allow_duplicates=args.allow_duplicates)
    for note in merged.notes:
        print(f"speedbench merge: {note}", file=sys.stderr)
    doc = merged.document
    shards = doc["speedbench"]["shards"]
    written = [write_atomic(args.output, doc)] if args.output else []
    if args.save:
        written.append(Storage(args.storage).save(doc))
    for path in written:
        print(f"{path}: {len(doc['benchmarks'])} case(s) from shard(s) "
              f"{', '.join(str(k) for k in shards['merged'])} of {shards['count']}"
              + (f"; missing: {', '.join(str(k) for k in shards['missing'])}" if shards["missing"] else ""))
    return 0


def register(subparsers: Any) -> None:
    p = results_command(subparsers, "merge", description=__doc__.splitlines()[0], run=run,
                        help="join the results of --speedbench-shard=K/N runs into one run to compare and gate",
                        results_help="shard results files: paths, 'latest' or run numbers NNNN in --storage")
    p.add_argument("-o", "--output", metavar="RUN.json", help="write the merged run here")
    p.add_argument("--save", action="store_true", help="also save it in --storage as the next numbered run")
    p.add_argument("--allow-missing", action="store_true",
                   help="write the run without the shards that did not report (recorded; compare's gate fails them)")
    p.add_argument("--allow-duplicates", action="store_true",
                   help="a shard given twice (a retried job): keep the newer file instead of failing")
