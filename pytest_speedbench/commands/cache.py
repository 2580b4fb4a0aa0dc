"""`speedbench cache list|clear`: the prepared-prompt cache ($SPEEDBENCH_CACHE/prompts).

Each entry is one dataset config prepared for one selection (--num-prompts, categories, seed,
warmup) and one tokenizer + chat template; a run that matches one skips reading, bucketing and
tokenizing. The cache is bounded by $SPEEDBENCH_CACHE_MAX (default 2G; 0 turns caching off):
least recently used entries go first. `clear` removes only prepared prompts, never the
llama-server build, converted models or virtual environments that share the cache root.
"""

from __future__ import annotations

import argparse
import json
import time

from pytest_speedbench.commands import command
from pytest_speedbench.data.prompt_cache import DEFAULT_MAX, ENV_MAX, PromptCache


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="list or clear the prepared-prompt cache", description=__doc__)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = command(actions, "list", help="entries, least recently used first: config, prompts, size, last use",
                 run=run_list)
    ls.add_argument("--json", action="store_true", help="print JSON")
    command(actions, "clear", help="remove every prepared-prompt entry", run=run_clear)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def run_list(args: argparse.Namespace) -> int:
    cache = PromptCache()
    entries = cache.entries()
    if args.json:
        print(json.dumps({"root": str(cache.root), "limit_bytes": cache.limit, "entries": [
            {"key": e.key, "bytes": e.bytes, "last_used": e.used, "config": e.meta.get("config"),
             "prompts": len(e.meta.get("prompt_ids", ())), "dataset": e.meta.get("dataset")} for e in entries]}))
        return 0
    total = sum(e.bytes for e in entries)
    print(f"{cache.root}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {_mb(total)} of "
          f"{_mb(cache.limit)} (${ENV_MAX}, default {DEFAULT_MAX})")
    for e in entries:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.used))
        print(f"  {e.key[:12]}  {e.meta.get('config', '?'):16s} {len(e.meta.get('prompt_ids', ())):6d} prompts "
              f"{_mb(e.bytes):>10s}  used {used}  {e.meta.get('dataset', '')}")
    return 0


def run_clear(args: argparse.Namespace) -> int:
    cache = PromptCache()
    removed = cache.clear()
    print(f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'} "
          f"({_mb(sum(e.bytes for e in removed))}) from {cache.root}")
    return 0
