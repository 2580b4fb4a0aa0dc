"""Subcommands of the `speedbench` console script: one module each, with `register(sub)`."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

RESULTS_HELP = "results files: paths, 'latest' or run numbers NNNN in --storage"


def results_command(
    subparsers: Any, name: str, help: str, description: str, run: Callable[[argparse.Namespace], int],
    *, results_help: str = RESULTS_HELP, options: Sequence[str] = ("storage",),
) -> argparse.ArgumentParser:
    """A subcommand that reads results files: the RESULTS arguments and the options it shares
    with the plugin (settings/options.py's COMMAND_OPTIONS), declared once for compare, report
    and export."""
    from pytest_speedbench.settings.options import add_command_options

    p = subparsers.add_parser(name, help=help, description=description)
    p.add_argument("results", nargs="+", metavar="RESULTS", help=results_help)
    add_command_options(p, options)
    p.set_defaults(func=run)
    return p


def add_bootstrap_options(parser: argparse.ArgumentParser, n_boot: int = 2000) -> None:
    """--n-boot and --seed (the plugin's seed option) of the commands that resample results."""
    from pytest_speedbench.settings.options import add_command_options

    parser.add_argument("--n-boot", type=int, default=n_boot, help=f"bootstrap resamples (default: {n_boot})")
    add_command_options(parser, ("seed",))
