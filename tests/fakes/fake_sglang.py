"""A fake SGLang server: the real /generate wire format over a seeded acceptance process.

Every verification step accepts draft position i with probability `accept[i]` given that
positions 1..i-1 were accepted (so the true conditional acceptance rates are known), emits
1 + accepted tokens, and sleeps `step_ms`. With `--coalesce K` it streams K steps per event,
as a server that batches its output would. The emitted step sizes of every request are
appended to `--ground-truth` (JSON lines) so tests can compare the plugin's figures with the
truth exactly. Faults are injected with `--fault`.

Run: python tests/fakes/fake_sglang.py --port PORT [--accept 0.8,0.6,0.4] [--step-ms 5] ...
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_engine_faults import draw_steps  # noqa: E402  (one acceptance process for every fake)

FAULTS = ("none", "crash_midstream", "hang", "http500", "malformed", "no_done", "backwards", "no_counters")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--accept", default="0.8,0.6,0.4", help="conditional acceptance per draft position")
    p.add_argument("--step-ms", type=float, default=2.0)
    p.add_argument("--prefill-ms", type=float, default=2.0)
    p.add_argument("--coalesce", type=int, default=1, help="verification steps per streamed event")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ground-truth", type=Path, default=None)
    p.add_argument("--incremental", action="store_true", help="incremental output_ids (not cumulative)")
    p.add_argument("--version", default="0.5.23", help="version reported; <0.5.10 uses old counter names")
    p.add_argument("--algorithm", default="EAGLE3", help="speculative algorithm reported; NONE disables SD")
    p.add_argument("--fault", choices=FAULTS, default="none")
    p.add_argument("--fault-request", type=int, default=-1, help="only the Nth request (0-based) faults")
    p.add_argument("--fault-after", type=int, default=2, help="events before a mid-stream fault")
    return p.parse_args(argv)


def old_counter_names(version: str) -> bool:
    parts = tuple(int(x) for x in version.split(".")[:3] if x.isdigit())
    return parts < (0, 5, 10)


class FakeSGLang:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.accept = [float(x) for x in args.accept.split(",") if x] if args.algorithm != "NONE" else []
        self.requests = 0

    def meta_counters(self, sizes: list[int], total: int) -> dict:
        if not self.accept or self.args.fault == "no_counters":
            return {}
        accepted = sum(s - 1 for s in sizes)
        hist = [0] * (len(self.accept) + 1)
        for s in sizes:
            hist[s - 1] += 1
        verify = len(sizes)
        meta = {"spec_verify_ct": verify, "spec_accept_length": total / verify if verify else 0.0}
        if old_counter_names(self.args.version):
            meta.update(spec_accept_token_num=accepted, spec_draft_token_num=verify * len(self.accept),
                        spec_accept_histogram=hist)
        else:
            meta.update(spec_num_correct_drafts=accepted, spec_num_proposed_drafts=verify * len(self.accept),
                        spec_correct_drafts_histogram=hist, spec_accept_rate=accepted / max(1, verify * len(self.accept)))
        return meta

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        index = self.requests
        self.requests += 1
        faulty = self.args.fault != "none" and self.args.fault_request in (-1, index)
        fault = self.args.fault if faulty else "none"
        if fault == "http500":
            return web.json_response({"error": "injected internal error"}, status=500)
        input_ids = body.get("input_ids")
        if not isinstance(input_ids, list) or not body.get("stream"):
            return web.json_response({"error": "fake expects input_ids and stream"}, status=400)
        sp = body.get("sampling_params") or {}
        max_new = int(sp.get("max_new_tokens", 16))
        digest = hashlib.sha256(json.dumps(input_ids).encode()).digest()
        rng = random.Random(self.args.seed * 1_000_003 + int.from_bytes(digest[:8], "big") + index)
        sizes = draw_steps(rng, self.accept, max_new - 1) if self.accept else [1] * (max_new - 1)
        ids = [rng.randrange(100, 30000) for _ in range(max_new)]

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await asyncio.sleep(self.args.prefill_ms / 1000)
        events = [[1]]  # prefill chunk
        k = max(1, self.args.coalesce)
        for i in range(0, len(sizes), k):
            events.append(sizes[i:i + k])
        emitted = 0
        for n, group in enumerate(events):
            if n > 0:
                await asyncio.sleep(self.args.step_ms * len(group) / 1000)
            if n == self.args.fault_after and fault in ("crash_midstream", "hang", "malformed", "backwards", "no_done"):
                if fault == "crash_midstream":
                    os.kill(os.getpid(), signal.SIGKILL)
                if fault == "hang":
                    await asyncio.sleep(3600)
                if fault == "malformed":
                    await resp.write(b'data: {"output_ids": [1, 2\n\n')
                    continue
                if fault == "backwards":
                    emitted = max(0, emitted - 2)
                if fault == "no_done":
                    return resp
            emitted += sum(group)
            last = n == len(events) - 1
            meta = {"id": f"req-{index}", "prompt_tokens": len(input_ids), "completion_tokens": emitted,
                    "finish_reason": None}
            if last:
                meta["finish_reason"] = {"type": "length", "length": max_new}
                meta.update(self.meta_counters(sizes, emitted))
            out = ids[emitted - sum(group):emitted] if self.args.incremental else ids[:emitted]
            event = {"text": "", "output_ids": out, "meta_info": meta}
            await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        if self.args.ground_truth:
            with self.args.ground_truth.open("a") as f:
                f.write(json.dumps({"request": index, "input_len": len(input_ids), "prefill": 1,
                                    "steps": sizes, "events": [sum(g) for g in events],
                                    "t_done": time.time()}) + "\n")
        return resp

    async def server_info(self, request: web.Request) -> web.Response:
        return web.json_response({
            "version": self.args.version,
            "speculative_algorithm": None if self.args.algorithm == "NONE" else self.args.algorithm,
            "speculative_num_draft_tokens": len(self.accept) + 1 if self.accept else None,
            "model_path": "fake/model",
        })

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="")


def make_app(args: argparse.Namespace) -> web.Application:
    fake = FakeSGLang(args)
    app = web.Application()
    app.router.add_post("/generate", fake.generate)
    app.router.add_get("/get_server_info", fake.server_info)
    app.router.add_get("/server_info", fake.server_info)
    app.router.add_get("/get_model_info", lambda r: web.json_response({"model_path": "fake/model"}))
    app.router.add_get("/health", fake.health)
    app.router.add_get("/health_generate", fake.health)
    return app


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    web.run_app(make_app(args), host=args.host, port=args.port, print=lambda *a: print(*a, flush=True),
                access_log=None, handle_signals=True)


if __name__ == "__main__":
    sys.exit(main())
