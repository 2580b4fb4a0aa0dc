"""A fake `python -m sglang.launch_server`: the flags of SGLang 0.5.9 or 0.5.23, then the fake server.

Run: FAKE_ENGINE_VERSION=0.5.9 python tests/fakes/fake_sglang_launch.py --model-path M --port P ...
The flag set follows the version (the CUDA-graph batch flag was `--cuda-graph-max-bs` in 0.5.9
and `--cuda-graph-max-bs-decode` by 0.5.23); unknown flags exit 2 like argparse. `--help`
lists the flags, which is what the engine probes. Once parsed, the server is tests/fakes/
fake_sglang.py's (the lead's wire format, seeded acceptance, counter names by version) with
acceptance truncated to --speculative-num-steps. Faults come from FAKE_ENGINE_* variables;
"slow_start" refuses connections for half the delay, then answers /health_generate 503.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from aiohttp import web  # noqa: E402

import fake_sglang  # noqa: E402
from fake_engine_faults import Faults, log  # noqa: E402

DEFAULT_VERSION = "0.5.23"


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split(".")[:3] if x.isdigit())


def build_parser(version: str) -> argparse.ArgumentParser:
    new = _version_tuple(version) >= (0, 5, 10)
    p = argparse.ArgumentParser(prog="launch_server.py")
    p.add_argument("--model-path", "--model", dest="model_path", required=True)
    p.add_argument("--tokenizer-path")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--tp-size", "--tensor-parallel-size", type=int, default=1)
    p.add_argument("--dp-size", "--data-parallel-size", type=int, default=1)
    p.add_argument("--mem-fraction-static", type=float)
    p.add_argument("--context-length", type=int)
    p.add_argument("--max-running-requests", type=int)
    p.add_argument("--chunked-prefill-size", type=int)
    p.add_argument("--disable-radix-cache", action="store_true")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--dtype")
    p.add_argument("--random-seed", type=int)
    p.add_argument("--log-level")
    p.add_argument("--attention-backend")
    algorithms = ["EAGLE", "EAGLE3", "NEXTN", "STANDALONE", "NGRAM"] + (["DFLASH"] if new else [])
    p.add_argument("--speculative-algorithm", choices=algorithms)
    p.add_argument("--speculative-draft-model-path", "--speculative-draft-model")
    p.add_argument("--speculative-num-steps", type=int)
    p.add_argument("--speculative-eagle-topk", type=int)
    p.add_argument("--speculative-num-draft-tokens", type=int)
    p.add_argument("--speculative-ngram-max-bfs-breadth", type=int)
    p.add_argument("--speculative-ngram-min-bfs-breadth", type=int)
    if new:
        p.add_argument("--cuda-graph-max-bs-decode", type=int)
        p.add_argument("--cuda-graph-bs-decode", type=int, nargs="+")
        p.add_argument("--cuda-graph-max-bs-prefill", type=int)
        p.add_argument("--cuda-graph-backend-decode", choices=["full", "breakable", "disabled"])
        p.add_argument("--speculative-ngram-max-trie-depth", type=int)
    else:
        p.add_argument("--cuda-graph-max-bs", type=int)
        p.add_argument("--cuda-graph-bs", type=int, nargs="+")
        p.add_argument("--speculative-ngram-min-match-window-size", type=int)
        p.add_argument("--speculative-ngram-max-match-window-size", type=int)
    p.add_argument("--disable-cuda-graph", action="store_true")
    return p


def validate(args: argparse.Namespace) -> int:
    """Mimic SGLang's checks; returns the number of draft tokens per step (0 without SD)."""
    algo = args.speculative_algorithm
    if algo is None:
        return 0
    if algo in ("EAGLE", "EAGLE3", "STANDALONE") and not args.speculative_draft_model_path:
        raise SystemExit(f"ValueError: --speculative-draft-model-path is required for {algo}")
    if algo == "NGRAM":
        return (args.speculative_num_draft_tokens or 12) - 1
    steps, topk, tokens = args.speculative_num_steps, args.speculative_eagle_topk, args.speculative_num_draft_tokens
    if topk == 1 and tokens is not None and steps is not None and tokens != steps + 1:
        raise SystemExit("ValueError: speculative_num_draft_tokens must be speculative_num_steps + 1 when topk is 1")
    return steps or 3


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    faults = Faults.from_env()
    version = faults.version or DEFAULT_VERSION
    args = build_parser(version).parse_args(argv)
    faults.begin(argv, f"[fake sglang {version}] server_args: {vars(args)}")
    k = validate(args)
    accept = (faults.accept[:k] + [0.0] * max(0, k - len(faults.accept))) if k else []
    fault = {"crash_midstream": "crash_midstream", "hang_midstream": "hang"}.get(faults.mode, "none")
    inner = ["--host", args.host, "--port", str(args.port), "--version", version,
             "--step-ms", str(faults.step_ms), "--seed", str(faults.seed), "--fault", fault,
             "--algorithm", args.speculative_algorithm or "NONE"]
    if accept:
        inner += ["--accept", ",".join(str(a) for a in accept)]
    if args.speculative_algorithm == "NGRAM":
        inner += ["--memory"]  # the real NGRAM corpus remembers earlier requests until /flush_cache
    if faults.ground_truth is not None:
        inner += ["--ground-truth", str(faults.ground_truth)]
    fake_args = fake_sglang.parse_args(inner)
    app = fake_sglang.make_app(fake_args)
    ready_at = time.monotonic()
    if faults.mode == "slow_start":
        log("Load weight begin (fake)")
        time.sleep(faults.delay / 2)  # nothing listens yet
        ready_at = time.monotonic() + faults.delay / 2

    @web.middleware
    async def starting(request: web.Request, handler):
        if request.path in ("/health", "/health_generate") and time.monotonic() < ready_at:
            return web.Response(status=503)
        return await handler(request)

    app.middlewares.append(starting)
    log(f"INFO Uvicorn running on http://{args.host}:{args.port} (fake)")
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
