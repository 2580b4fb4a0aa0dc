"""Figures for the llamacpp engine: AL per category, speedups, harness overhead.

Not collected by pytest (no test_ prefix). Run after `speedbench build-llama-server`:

    python benchmarks/bench_llamacpp.py --per-category 2 --output-len 64

For each drafter it launches llama-server through LlamaCppEngine, sends the bundled
qualitative prompts (chat template and tokenization by the server's own /apply-template and
/tokenize, done before the measured run) as token ids at the given concurrency, stamps every
SSE event on receipt with a lean aiohttp loop, and parses events after each stream ends.

Reported per drafter:
- AL per category from the engine counters (1 + accepted / steps; llama-server streams one
  token per event, so chunk AL would always be 1);
- decode TPS seen by the client, (N - 1) / (t_last - t_first), per request;
- measured speedup (SD user TPS / AR user TPS) and analytical speedup
  step_latency(AR) x AL / step_latency(SD), step latency = decode time / counter steps;
- harness overhead ratio: client decode TPS / llama-server's timings.predicted_per_second
  on the same requests (1.0 = the client adds nothing; goal >= 0.97).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from pytest_speedbench.engines.base import EngineConfig, SamplingParams
from pytest_speedbench.engines.llamacpp import LlamaCppEngine

POOL = Path(__file__).resolve().parent.parent / "pytest_speedbench" / "data" / "bundled" / "qualitative_pool.jsonl"


@dataclass
class Req:
    category: str
    prompt_ids: list[int]
    times: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    counters: dict | None = None
    t_send: float = 0.0


def load_prompts(per_category: int) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in POOL.read_text().splitlines() if line.strip()]
    seen: dict[str, int] = defaultdict(int)
    out = []
    for row in rows:
        if seen[row["category"]] < per_category:
            seen[row["category"]] += 1
            out.append((row["category"], row["turns"][0]))
    return out


def tokenize(base_url: str, prompts: list[tuple[str, str]]) -> list[tuple[str, list[int]]]:
    out = []
    with httpx.Client(base_url=base_url, timeout=30) as c:
        for cat, text in prompts:
            rendered = c.post("/apply-template", json={"messages": [{"role": "user", "content": text}]}).json()["prompt"]
            ids = c.post("/tokenize", json={"content": rendered, "add_special": True}).json()["tokens"]
            out.append((cat, ids))
    return out


async def stream_one(session, url: str, engine: LlamaCppEngine, req: Req, sampling: SamplingParams) -> None:
    import time as _t

    http = engine.build_request(req.prompt_ids, sampling)
    raw: list[tuple[float, bytes]] = []
    req.t_send = _t.perf_counter()
    async with session.post(url + http.path, data=http.body, headers=http.headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {await resp.text()}")
        async for line in resp.content:
            if line.startswith(b"data: "):
                raw.append((_t.perf_counter(), line[6:].rstrip()))
    parser = engine.new_parser()  # parse after the stream: off the latency-critical path
    for t, data in raw:
        ev = parser.parse(data)
        if ev is None:
            continue
        if ev.new_token_ids:
            req.times.append(t)
            req.tokens.extend(ev.new_token_ids)
        if ev.finished:
            req.counters = ev.counters


async def run_all(engine: LlamaCppEngine, reqs: list[Req], sampling: SamplingParams, concurrency: int) -> float:
    import aiohttp

    queue: asyncio.Queue[Req] = asyncio.Queue()
    for r in reqs:
        queue.put_nowait(r)
    t0 = time.perf_counter()
    # llama-server closes the connection after a streamed response: reusing it from the
    # pool fails with ServerDisconnectedError, so every stream gets a fresh connection
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:

        async def worker() -> None:
            while not queue.empty():
                await stream_one(session, engine.base_url, engine, queue.get_nowait(), sampling)

        await asyncio.gather(*[worker() for _ in range(concurrency)])
    return time.perf_counter() - t0


def summarize(reqs: list[Req], wall: float) -> dict:
    by_cat: dict[str, list[float]] = defaultdict(list)
    ratios, client_tps, step_lat, als = [], [], [], []
    steps_sum = acc_sum = drafted_sum = 0
    for r in reqs:
        c = r.counters or {}
        n = len(r.tokens)
        decode_s = r.times[-1] - r.times[0]
        steps = c["decode_steps"]
        al = (steps + c["accepted"]) / steps if steps else float("nan")
        als.append(al)
        by_cat[r.category].append(al)
        steps_sum += steps
        acc_sum += c["accepted"]
        drafted_sum += c.get("drafted", 0)
        tps = (n - 1) / decode_s
        client_tps.append(tps)
        step_lat.append(decode_s / steps)
        ratios.append(tps / c["engine_decode_tps"])
    return {
        "requests": len(reqs),
        "al_mean": statistics.fmean(als),
        "al_pooled": (steps_sum + acc_sum) / steps_sum,
        "acceptance_rate": acc_sum / drafted_sum if drafted_sum else None,
        "al_by_category": {k: round(statistics.fmean(v), 3) for k, v in sorted(by_cat.items())},
        "user_tps_mean": statistics.fmean(client_tps),
        "engine_decode_tps_mean": statistics.fmean(r.counters["engine_decode_tps"] for r in reqs),
        "step_latency_ms": 1e3 * statistics.fmean(step_lat),
        "output_tps": sum(len(r.tokens) for r in reqs) / wall,
        "overhead_ratio_mean": statistics.fmean(ratios),
        "overhead_ratio_min": min(ratios),
        "overhead_ratio_median": statistics.median(ratios),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drafters", default="none,ngram,draft")
    ap.add_argument("--per-category", type=int, default=2)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--draft-length", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here too")
    args = ap.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    texts = load_prompts(args.per_category)
    sampling = SamplingParams(temperature=0.0, max_new_tokens=args.output_len, ignore_eos=True, seed=0)
    results: dict[str, dict] = {}
    encoded = None
    workdir = Path(tempfile.mkdtemp(prefix="bench-llamacpp-"))
    for drafter in args.drafters.split(","):
        extra = (("threads", args.threads),) if args.threads else ()
        cfg = EngineConfig(engine="llamacpp", drafter=drafter, draft_length=args.draft_length,
                           max_batch_size=args.batch_size, ready_timeout_s=120, extra=extra)
        engine = LlamaCppEngine(cfg, workdir)
        engine.start()
        try:
            if encoded is None:
                encoded = tokenize(engine.base_url, texts)
            warm = [Req(c, ids) for c, ids in encoded[: args.warmup]]
            asyncio.run(run_all(engine, warm, sampling, args.batch_size))
            reqs = [Req(c, ids) for c, ids in encoded]
            wall = asyncio.run(run_all(engine, reqs, sampling, args.batch_size))
            results[drafter] = summarize(reqs, wall)
            results[drafter]["launch"] = engine.info()["launch_command"]
        finally:
            engine.stop()
        r = results[drafter]
        print(f"[{drafter}] n={r['requests']} AL={r['al_mean']:.3f} (pooled {r['al_pooled']:.3f}) "
              f"AR={r['acceptance_rate']} user_tps={r['user_tps_mean']:.1f} "
              f"engine_tps={r['engine_decode_tps_mean']:.1f} step={r['step_latency_ms']:.2f} ms "
              f"overhead ratio mean={r['overhead_ratio_mean']:.4f} median={r['overhead_ratio_median']:.4f} "
              f"min={r['overhead_ratio_min']:.4f}", flush=True)
        if drafter != "none":
            print(f"    AL by category: {r['al_by_category']}")
    base = results.get("none")
    if base:
        for drafter, r in results.items():
            if drafter == "none":
                continue
            r["speedup_user_tps"] = r["user_tps_mean"] / base["user_tps_mean"]
            r["speedup_output_tps"] = r["output_tps"] / base["output_tps"]
            r["speedup_analytical"] = base["step_latency_ms"] * r["al_mean"] / r["step_latency_ms"]
            print(f"[{drafter}] speedup measured user_tps x{r['speedup_user_tps']:.3f} "
                  f"output_tps x{r['speedup_output_tps']:.3f}, analytical x{r['speedup_analytical']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
