"""`speedbench list` and `speedbench prune --keep N`: the saved runs of the storage folder.

Why: as with pytest-benchmark's `list`, a user choosing a baseline needs to see which runs exist,
which are whole (run status) and what each measured, without opening JSON files; a nightly box
needs to bound its storage.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_speedbench.commands import command
from pytest_speedbench.errors import UsageError
from pytest_speedbench.results import status
from pytest_speedbench.results.document import Storage, load_results
from pytest_speedbench.settings.options import add_command_options

HEADERS = ("run", "name", "commit", "date", "status", "cases", "settings")


def row(path: Path, doc: Mapping[str, Any] | None) -> tuple[str, ...]:
    """One line of `speedbench list` for a saved run (an unreadable file says so)."""
    number = path.name[:4]
    if doc is None:
        return (number, "", "", "", "unreadable", "", path.name)
    section = status.run_section(doc)
    commit = doc.get("commit_info") or {}
    commit_id = (commit.get("id") or "-")[:8] + ("+" if commit.get("dirty") else "")
    cases = section.get("cases") or {}
    entries = doc.get("benchmarks") or []
    count = f"{cases['measured']}/{cases['selected']}" if "measured" in cases else str(len(entries))
    config = (doc.get("speedbench") or {}).get("config") or {}
    settings = ", ".join(f"{k}={_short(config[k])}" for k in ("engine", "drafter", "split", "category", "output_len",
                                                             "num_prompts", "dataset") if config.get(k) not in (None, [], ""))
    state, _ = status.status_of(doc)
    return (number, str(section.get("name") or ""), commit_id, str(doc.get("datetime") or "")[:19].replace("T", " "),
            state, count, settings)


def _short(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, list) else str(value)


def table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in [HEADERS, *rows]) for i in range(len(HEADERS))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [HEADERS, *rows]]


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return load_results(path)
    except UsageError:
        return None


def run_list(args: argparse.Namespace) -> int:
    storage = Storage(args.storage)
    runs = storage.runs()
    if not runs:
        print(f"no saved runs in {storage.folder}")
        return 0
    print(f"{storage.folder}:")
    for line in table([row(p, _load(p)) for p in runs]):
        print(line)
    pick = storage.latest()
    print(f"latest = {pick.path.name if pick.path else 'none (no complete run)'}")
    return 0


def run_prune(args: argparse.Namespace) -> int:
    if args.keep < 1:
        raise UsageError(f"--keep: {args.keep} must be at least 1 (the newest runs to keep)")
    storage = Storage(args.storage)
    runs = storage.runs()
    doomed = runs[:-args.keep] if len(runs) > args.keep else []
    for path in doomed:
        if not args.dry_run:
            path.unlink()
        print(f"{'would remove' if args.dry_run else 'removed'} {path.name}")
    print(f"kept {len(runs) - len(doomed)} run(s) in {storage.folder}")
    return 0


def register(subparsers: Any) -> None:
    p = command(subparsers, "list", help="the saved runs: number, name, commit, date, status, cases, settings",
                run=run_list, description=__doc__.splitlines()[0])
    add_command_options(p, ("storage",))
    p = command(subparsers, "prune", help="remove all but the newest N saved runs", run=run_prune,
                description="Remove all but the newest --keep N saved runs of the storage folder.")
    p.add_argument("--keep", type=int, required=True, metavar="N", help="how many of the newest runs to keep")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    add_command_options(p, ("storage",))
