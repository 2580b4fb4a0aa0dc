"""`speedbench model info|convert|draft`: show how a --model value resolves, convert it ahead of
time, or build its layer-truncated draft (for --drafter=draft).

Converting a GGUF (the bundled SmolLM2 included) takes tens of seconds once; running
`speedbench model convert` before a benchmark keeps that out of the first test's setup.
"""

from __future__ import annotations

import argparse
import json
import time

from pytest_speedbench.commands import command
from pytest_speedbench import models


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="inspect or pre-convert a model (default: the bundled SmolLM2-135M)",
                       description=__doc__)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, help_text in (
        ("info", "print the resolved model (name, GGUF source, cache folder, converted?) without converting"),
        ("convert", "convert into the cache now (no-op when already converted) and print the folder"),
    ):
        a = command(actions, name, help=help_text, run=run)
        a.add_argument("spec", nargs="?", default=None,
                       help=f"bundled name ({models.BUNDLED_NAME}), folder, .gguf file or hub id")
        a.add_argument("--json", action="store_true", help="print JSON")
    d = command(actions, "draft", help="build (once) and print a draft model: the model's first N decoder layers",
                run=run_draft)
    d.add_argument("spec", nargs="?", default=None, help=f"bundled name ({models.BUNDLED_NAME}), folder, .gguf or hub id")
    d.add_argument("--layers", type=int, default=models.DRAFT_LAYERS, help="decoder layers kept (default %(default)s)")


def run_draft(args: argparse.Namespace) -> int:
    print(models.truncated_draft(args.spec, args.layers))
    return 0


def run(args: argparse.Namespace) -> int:
    ref = models.resolve_model(args.spec)
    out: dict[str, object] = {"name": ref.name, "gguf": str(ref.gguf) if ref.gguf else None}
    if args.action == "convert":
        started = time.perf_counter()
        out["hf_dir"] = str(ref.hf_dir)
        out["seconds"] = round(time.perf_counter() - started, 2)
    else:
        out["hf_dir"] = str(ref.source_dir or ref.cache_dir)
    out["converted"] = ref.converted
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for key, value in out.items():
            print(f"{key:10} {value}")
    return 0
