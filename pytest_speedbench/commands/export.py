"""`speedbench export RESULTS... --csv FILE | --parquet FILE`: one flat pandas table of all runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pytest_speedbench.errors import UsageError
from pytest_speedbench.commands import results_command
from pytest_speedbench.results.export import load_runs, runs_dataframe, write_table


def run(args: argparse.Namespace) -> int:
    if not (args.csv or args.parquet):
        raise UsageError("say where to write: --csv FILE and/or --parquet FILE")
    frame = runs_dataframe(load_runs(args.results, args.storage))
    for fmt, target in (("csv", args.csv), ("parquet", args.parquet)):
        if target:
            path = write_table(frame, Path(target), fmt)
            print(f"{path}: {len(frame)} rows x {len(frame.columns)} columns")
    return 0


def register(subparsers: Any) -> None:
    p = results_command(subparsers, "export", description=__doc__.splitlines()[0], run=run,
                        help="flat table of all runs (a row per case per run) as CSV or Parquet")
    p.add_argument("--csv", metavar="FILE", help="write CSV here")
    p.add_argument("--parquet", metavar="FILE", help="write Parquet here (needs pyarrow)")

