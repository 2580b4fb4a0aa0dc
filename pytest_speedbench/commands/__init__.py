"""Subcommands of the `speedbench` console script: one module each.

One convention: a module's `register(subparsers)` adds its parser with `command(...)` (or, for a
command over results files, `results_command(...)`), and `run(args) -> int` (the exit code) does
the work; a command with actions (`data stats`, `model draft`) registers each action with
`command(...)` and a `run_<action>`. Commands parse arguments and print; what they compute lives
in the stage it belongs to (results/, analysis/, data/, models.py, engines/, measure/).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

RESULTS_HELP = "results files: paths, 'latest' or run numbers NNNN in --storage"


def command(subparsers: Any, name: str, help: str, run: Callable[[argparse.Namespace], int],
            description: str | None = None) -> argparse.ArgumentParser:
    """The parser of one command (or action): `speedbench NAME` calls `run(args)`, whose return
    value is the exit code."""
    p = subparsers.add_parser(name, help=help, description=description or help)
    p.set_defaults(func=run)
    return p


def results_command(
    subparsers: Any, name: str, help: str, description: str, run: Callable[[argparse.Namespace], int],
    *, results_help: str = RESULTS_HELP, options: Sequence[str] = ("storage",),
) -> argparse.ArgumentParser:
    """A command that reads results files: the RESULTS arguments and the options it shares
    with the plugin (settings/options.py's COMMAND_OPTIONS), declared once for compare, report,
    export, sweep and predict."""
    from pytest_speedbench.settings.options import add_command_options

    p = command(subparsers, name, help, run, description)
    p.add_argument("results", nargs="+", metavar="RESULTS", help=results_help)
    add_command_options(p, options)
    return p


def add_bootstrap_options(parser: argparse.ArgumentParser, n_boot: int = 2000) -> None:
    """--n-boot and --seed (the plugin's seed option) of the commands that resample results."""
    from pytest_speedbench.settings.options import add_command_options

    parser.add_argument("--n-boot", type=int, default=n_boot, help=f"bootstrap resamples (default: {n_boot})")
    add_command_options(parser, ("seed",))
