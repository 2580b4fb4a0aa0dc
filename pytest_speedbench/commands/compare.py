"""`speedbench compare BASELINE RUN [RUN ...]`: side-by-side metrics per case, changes and verdicts.

The first file is the baseline; every other run is compared with it through `gates.evaluate`,
the same code the plugin uses, so `--fail`/`--strict`/`--config` behave as in a pytest session
and the exit code (1 when a rule or threshold is broken) can gate CI on its own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pytest_speedbench.commands import RESULTS_HELP, results_command
from pytest_speedbench.errors import UsageError
from pytest_speedbench.metrics import catalogue
from pytest_speedbench.results import fingerprint, gates
from pytest_speedbench.results.compare import (
    FORMATS, GateProblems, compare_runs, exit_code, per_category_text, render, run_problems, status_lines,
    thresholds_from_yaml,
)
from pytest_speedbench.results.document import Storage
from pytest_speedbench.results.export import load_runs
from pytest_speedbench.settings.options import COMMAND_OPTIONS


def run(args: argparse.Namespace) -> int:
    if args.format not in FORMATS:  # argparse checks choices; kept for programmatic callers
        raise UsageError(f"unknown format {args.format!r}; valid formats: {', '.join(FORMATS)}")
    thresholds, yaml_rules = thresholds_from_yaml(args.config)
    rules = gates.parse_fail_rules(args.fail, "--fail") if args.fail else yaml_rules
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else catalogue.paths(catalogue.COMPARE)
    for m in metrics:
        gates.check_metric(m, "--metrics")
    allow_change = fingerprint.check_fields(_split(args.allow_change), "--allow-change")
    storage = Storage(args.storage)
    picks = {i: storage.latest() for i, ref in enumerate(args.results) if str(ref) == "latest"}
    for pick in picks.values():  # the terminal names the run `latest` picked and those it passed over
        for line in pick.lines():
            print(line.removeprefix("speedbench: "), file=sys.stderr)
    runs = load_runs(args.results, args.storage)
    if len(runs) < 2 and not thresholds:
        raise UsageError("compare needs a baseline and at least one run (or --config with thresholds for one run)")
    comparisons = compare_runs(runs, rules=rules, thresholds=thresholds, strict=args.strict, metrics=metrics,
                               allow_missing=args.allow_missing, allow_change=allow_change)
    problems = run_problems(runs, picks, allow_missing=args.allow_missing) if rules and len(runs) > 1 \
        else GateProblems()
    text = render(comparisons, [r.label for r in runs], args.format, gated=bool(rules or thresholds),
                  rules_text=",".join(r.text for r in rules),
                  preamble=status_lines(runs), problems=problems.lines())
    if args.per_category:
        text += per_category_text(runs, args.format)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return exit_code(comparisons, problems)


def _split(raw: Any) -> list[str]:
    if not raw:
        return []
    items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
    return [str(i).strip() for i in items if str(i).strip()]


def register(subparsers: Any) -> None:
    p = results_command(subparsers, "compare", description=__doc__.splitlines()[0], run=run,
                        help="compare results files side by side (first = baseline); exit 1 on a broken --fail rule",
                        results_help=f"{RESULTS_HELP}; the first is the baseline", options=COMMAND_OPTIONS)
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    p.add_argument("--config", metavar="YAML", help="speedbench.yaml whose thresholds (and fail rules) apply")
    p.add_argument("--metrics", metavar="LIST", help="metrics to show (default: the catalogue's compare metrics, "
                   f"{','.join(catalogue.paths(catalogue.COMPARE))})")
    p.add_argument("--output", "-o", metavar="FILE", help="write the report to FILE instead of stdout")
    p.add_argument("--per-category", action="store_true", help="add each run's AL per category as a table")
