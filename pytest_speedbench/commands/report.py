"""`speedbench report RESULTS... --out DIR`: PNG plots plus a markdown and a self-contained HTML page."""

from __future__ import annotations

import argparse
from typing import Any

from pytest_speedbench.commands import results_command
from pytest_speedbench.results.export import load_runs


def run(args: argparse.Namespace) -> int:
    from pytest_speedbench.results.report import build_report

    runs = load_runs(args.results, args.storage)
    formats = ("md", "html") if args.format == "both" else (args.format,)
    report = build_report(runs, args.out, formats)
    for path in [*report.figures.values(), *report.pages]:
        print(path)
    return 0


def register(subparsers: Any) -> None:
    p = results_command(subparsers, "report", description=__doc__.splitlines()[0], run=run,
                        help="plots (Pareto, AL by category, AL histogram, conditional acceptance, speedup) and a "
                             "report page")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--format", choices=("md", "html", "both"), default="both", help="page format (default: both)")

