"""`speedbench sweep RESULTS...`: the best draft length per batch size, with intervals and a paired test.

For every (engine, drafter, workload, temperature) in the results and every batch size: the
output-TPS speedup of each draft length over the drafter=none run, its 95% interval, the best
draft length and whether it beats the runner-up by a paired bootstrap over prompts (maths in
`analysis/sweep.py`). Random-token control runs (split `random`) are also set beside their real
bucket: AL and speedup real vs random and the overestimation in percent.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pytest_speedbench.commands import add_bootstrap_options, results_command
from pytest_speedbench.errors import UsageError
from pytest_speedbench.results.export import load_runs

FORMATS = ("text", "markdown", "csv")


def run(args: argparse.Namespace) -> int:
    from pytest_speedbench.analysis import sweeps

    if args.n_boot < 100:
        raise UsageError(f"--n-boot {args.n_boot} is too small for a 95% interval; use 100 or more (default 2000)")
    found = sweeps.entries(load_runs(args.results, args.storage))
    groups = sweeps.sweep(found, n_boot=args.n_boot, seed=args.seed)
    control = sweeps.control_rows(found)
    if not groups and not control:
        drafters = sorted({e.drafter for e in found}) or ["none"]
        raise UsageError(
            "no speculative case with a draft length and a drafter=none twin in these results "
            f"(drafters found: {', '.join(drafters)}); run e.g. --drafter=none,ngram --draft-length=1,2,3,4"
        )
    out = []
    if groups:
        out.append(sweeps.sweep_table(groups, args.format))
    if control:
        # csv: a blank line between the two tables; text/markdown: a heading line too
        out.append("" if args.format == "csv" else
                   "\nrandom-token control vs the real bucket (overestimation = (random - real) / real):")
        out.append(sweeps.control_table(control, args.format))
    print("\n".join(part.rstrip("\n") for part in out))
    if args.plot is not None:
        for path in sweeps.save_sweep_figures(groups, Path(args.plot)):
            print(path)
    return 0


def register(subparsers: Any) -> None:
    p = results_command(subparsers, "sweep", description=__doc__.splitlines()[0], run=run,
                        help="best draft length per batch size (paired bootstrap) and the random control")
    p.add_argument("--format", choices=FORMATS, default="text", help="table format (default: text)")
    p.add_argument("--plot", metavar="DIR", help="also write speedup-vs-draft-length PNGs into DIR")
    add_bootstrap_options(p)
