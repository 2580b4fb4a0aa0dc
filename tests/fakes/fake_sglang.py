"""A fake SGLang server: the real /generate wire format over a seeded acceptance process.

Every verification step accepts draft position i with probability `accept[i]` given that
positions 1..i-1 were accepted (so the true conditional acceptance rates are known), emits
1 + accepted tokens, and sleeps `step_ms`. With `--coalesce K` it streams K steps per event,
as a server that batches its output would. The emitted step sizes of every request are
appended to `--ground-truth` (JSON lines) so tests can compare the plugin's figures with the
truth exactly. Faults are injected with `--fault`.

The events follow the real 0.5.23 server (recorded in ../shared/sglang-cpu/streams and
fixtures/streams): the same meta_info keys, no `spec_accept_token_num`,
`spec_correct_drafts_histogram[k]` = steps with k correct drafts, proposed = verify count x
(draft tokens - 1), `spec_accept_length` = completion_tokens / verify count, and with
`--end-effect`, the end effect: the last step's accepted drafts are counted before the output
is cut at max_new_tokens (off by default: the ground-truth tests compare counters with emitted
steps exactly until the metrics reconcile the overrun).

Between requests, like the real server: POST /flush_cache answers 200 when idle, 400 "Flush
cache failed." while a request runs, and with `?timeout=S` waits up to S seconds for idle.
`--memory` gives the fake an NGRAM-like cross-request memory: a prompt served since the last
flush has every draft accepted on its next visit (the real NGRAM corpus replays the earlier
answer). `--no-flush` removes the route (a server that cannot be reset).

Replay: `--replay PATH` (files or folders of recordings: raw `.sse` bodies, or
speedbench-raw-stream/1 `.jsonl` with receipt offsets) answers each /generate with a recorded
stream, byte for byte: the recording whose input_ids match the request, else the next one in
turn. `--replay-time-scale X` sleeps X times the recorded gaps (default 0: no sleeping).

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
from fake_engine_faults import draw_steps_with_overrun  # noqa: E402  (one acceptance process for every fake)

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
    p.add_argument("--per-prompt", action="store_true",
                   help="draw each request's steps from its prompt alone (not its arrival index), so a prompt "
                        "gets the same steps in any run and any order (sharded vs unsharded runs)")
    p.add_argument("--ground-truth", type=Path, default=None)
    p.add_argument("--incremental", action="store_true", help="incremental output_ids (not cumulative)")
    p.add_argument("--version", default="0.5.23", help="version reported; <0.5.10 uses old counter names")
    p.add_argument("--algorithm", default="EAGLE3", help="speculative algorithm reported; NONE disables SD")
    p.add_argument("--fault", choices=FAULTS, default="none")
    p.add_argument("--fault-request", type=int, default=-1, help="only the Nth request (0-based) faults")
    p.add_argument("--fault-after", type=int, default=2, help="events before a mid-stream fault")
    p.add_argument("--end-effect", action="store_true",
                   help="count the last step's drafts beyond max_new_tokens, as the real server does")
    p.add_argument("--memory", action="store_true", help="NGRAM-like memory of earlier prompts until /flush_cache")
    p.add_argument("--no-flush", dest="flush", action="store_false", help="no /flush_cache route")
    p.add_argument("--replay", type=Path, action="append", default=[], help="recorded streams to answer with")
    p.add_argument("--replay-time-scale", type=float, default=0.0)
    return p.parse_args(argv)


# -- recorded streams ------------------------------------------------------------------------


def _dechunk(body: bytes) -> bytes:
    """An HTTP/1.1 chunked body -> its payload."""
    out, rest = bytearray(), body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        rest = rest[size + 2:]
    return bytes(out)


def load_recording(path: Path) -> dict:
    """{"input_ids": [...] | None, "events": [(t, b"data: ...\n\n"), ...]} from one recording.

    Each `data:` line becomes one SSE event (the real server puts each event on one line).

    `.jsonl` (speedbench-raw-stream/1): a header line, then every socket read of the full HTTP
    response with its receipt offset; each SSE event gets the offset of the read that
    completed it. `.sse`: the body alone, no timing.
    """
    if path.suffix == ".jsonl":
        lines = path.read_text(encoding="utf-8").splitlines()
        header = json.loads(lines[0])
        reads = [json.loads(line) for line in lines[1:]]
        raw, ends = b"", []
        for read in reads:
            raw += read["b"].encode("latin-1")
            ends.append((len(raw), read["t"]))
        head, _, body = raw.partition(b"\r\n\r\n")
        head_len = len(head) + 4
        payload = _dechunk(body) if b"chunked" in head.lower() else body
        # receipt time of an event: the first read that reached its end (chunk framing adds a
        # few bytes per event, so map by the event's position in the de-chunked payload scaled
        # to the raw body; exact enough for gaps between events)
        # receipt time of an event: the first read that reached its end; chunk framing adds a
        # few bytes per event, so positions in the de-chunked payload are scaled to the raw body
        scale = (len(raw) - head_len) / max(1, len(payload))
        events, pos = [], 0
        for line in payload.split(b"\n"):
            pos += len(line) + 1
            if not line.startswith(b"data:"):
                continue
            offset = head_len + pos * scale
            t = next((t for end, t in ends if end >= offset), ends[-1][1])
            events.append((t, line + b"\n\n"))
        return {"input_ids": header.get("input_ids"), "events": events, "name": path.name}
    lines = [line for line in path.read_bytes().split(b"\n") if line.startswith(b"data:")]
    return {"input_ids": None, "events": [(0.0, line + b"\n\n") for line in lines], "name": path.name}


def load_recordings(paths: list[Path]) -> list[dict]:
    files: list[Path] = []
    for path in paths:
        files += sorted(f for f in path.iterdir() if f.suffix in (".sse", ".jsonl")) if path.is_dir() else [path]
    return [load_recording(f) for f in files]


def old_counter_names(version: str) -> bool:
    parts = tuple(int(x) for x in version.split(".")[:3] if x.isdigit())
    return parts < (0, 5, 10)


class FakeSGLang:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.accept = [float(x) for x in args.accept.split(",") if x] if args.algorithm != "NONE" else []
        self.requests = 0
        self.running = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.flushes = 0
        self.seen_prompts: set[str] = set()  # --memory: prompts served since the last flush
        self.recordings = load_recordings(args.replay) if args.replay else []

    def meta_counters(self, sizes: list[int], total: int, overrun: int = 0) -> dict:
        """The final event's SD counters, as 0.5.23 reports them (older names before 0.5.10).

        `overrun`: accepted drafts of the last step beyond max_new_tokens, counted by the real
        server although never emitted.
        """
        if not self.accept or self.args.fault == "no_counters":
            return {}
        accepted = sum(s - 1 for s in sizes) + overrun
        hist = [0] * (len(self.accept) + 1)
        for n, s in enumerate(sizes):
            hist[s - 1 + (overrun if n == len(sizes) - 1 else 0)] += 1
        verify = len(sizes)
        meta = {"spec_verify_ct": verify, "spec_accept_length": total / verify if verify else 0.0}
        if old_counter_names(self.args.version):
            meta.update(spec_accept_token_num=accepted, spec_draft_token_num=verify * len(self.accept),
                        spec_accept_histogram=hist)
        else:
            meta.update(spec_num_correct_drafts=accepted, spec_num_proposed_drafts=verify * len(self.accept),
                        spec_correct_drafts_histogram=hist, spec_accept_rate=accepted / max(1, verify * len(self.accept)))
        return meta

    def base_meta(self, index: int, prompt_tokens: int, completion_tokens: int) -> dict:
        """The meta_info keys every 0.5.23 event carries."""
        return {"id": f"{index:032x}", "finish_reason": None, "prompt_tokens": prompt_tokens,
                "weight_version": "default", "num_retractions": 0, "reasoning_tokens": 0,
                "completion_tokens": completion_tokens, "cached_tokens": 0, "cached_tokens_details": None,
                "dp_rank": None}

    async def flush_cache(self, request: web.Request) -> web.Response:
        """Like 0.5.23: only while idle; `?timeout=S` waits up to S seconds for idle."""
        timeout = float(request.query.get("timeout", "0") or 0)
        if self.running and timeout > 0:
            try:
                await asyncio.wait_for(self.idle.wait(), timeout)
            except asyncio.TimeoutError:
                return web.Response(status=400, text="Timed out waiting for idle state.")
        if self.running:
            return web.Response(status=400, text="Flush cache failed.\n")
        self.flushes += 1
        self.seen_prompts.clear()
        return web.Response(text="Cache flushed.\nPlease check backend logs for more details. (When there are "
                                 "running or waiting requests, the operation will not be performed.)\n")

    async def generate(self, request: web.Request) -> web.StreamResponse:
        self.running += 1
        self.idle.clear()
        try:
            if self.recordings:
                return await self.replay(request)
            return await self._generate(request)
        finally:
            self.running -= 1
            if not self.running:
                self.idle.set()

    async def replay(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        index = self.requests
        self.requests += 1
        ids = body.get("input_ids")
        match = [r for r in self.recordings if r["input_ids"] is not None and r["input_ids"] == ids]
        recording = match[0] if match else self.recordings[index % len(self.recordings)]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Replayed": recording["name"]})
        await resp.prepare(request)
        last = 0.0
        for t, event in recording["events"]:
            if self.args.replay_time_scale > 0 and t > last:
                await asyncio.sleep((t - last) * self.args.replay_time_scale)
            last = max(last, t)
            await resp.write(event)
        return resp

    async def _generate(self, request: web.Request) -> web.StreamResponse:
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
        order = 0 if self.args.per_prompt else index
        rng = random.Random(self.args.seed * 1_000_003 + int.from_bytes(digest[:8], "big") + order)
        accept = self.accept
        if self.args.memory and accept:
            if digest.hex() in self.seen_prompts:
                accept = [1.0] * len(accept)  # the corpus holds this prompt's earlier answer
            self.seen_prompts.add(digest.hex())
        sizes, overrun = draw_steps_with_overrun(rng, accept, max_new - 1) if accept else ([1] * (max_new - 1), 0)
        if not self.args.end_effect:
            overrun = 0
        ids = [rng.randrange(100, 30000) for _ in range(max_new)]

        started = time.monotonic()
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
                    # hangs until the client gives up; then, like the real server, which aborts
                    # a request whose client disconnected, it stops counting as running
                    while request.transport is not None and not request.transport.is_closing():
                        await asyncio.sleep(0.05)
                    return resp
                if fault == "malformed":
                    await resp.write(b'data: {"output_ids": [1, 2\n\n')
                    continue
                if fault == "backwards":
                    emitted = max(0, emitted - 2)
                if fault == "no_done":
                    return resp
            emitted += sum(group)
            last = n == len(events) - 1
            meta = self.base_meta(index, len(input_ids), emitted)
            if n == 0:
                meta["response_sent_to_client_ts"] = time.time()
            if last:
                meta["finish_reason"] = {"type": "length", "length": max_new}
                meta["weight_versions"] = [{"version": "default", "start": 0, "end": emitted}]
                meta["e2e_latency"] = time.monotonic() - started
                meta.update(self.meta_counters(sizes, emitted, overrun))
            out = ids[emitted - sum(group):emitted] if self.args.incremental else ids[:emitted]
            event = {"text": "", "output_ids": out, "meta_info": meta}
            await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        if self.args.ground_truth:
            with self.args.ground_truth.open("a") as f:
                f.write(json.dumps({"request": index, "input_len": len(input_ids), "prefill": 1,
                                    "steps": sizes, "events": [sum(g) for g in events], "overrun": overrun,
                                    "t_done": time.time()}) + "\n")
        return resp

    async def server_info(self, request: web.Request) -> web.Response:
        """A few of the ~480 keys 0.5.23 answers (resolved server_args plus version)."""
        spec = self.args.algorithm != "NONE"
        k = len(self.accept)
        return web.json_response({
            "version": self.args.version,
            "speculative_algorithm": self.args.algorithm if spec else None,
            "speculative_num_draft_tokens": k + 1 if spec else None,
            "speculative_num_steps": (k + 1 if self.args.algorithm == "NGRAM" else k) if spec else None,
            "speculative_eagle_topk": 1 if spec else None,
            "speculative_draft_model_path": None,
            "attention_backend": "fake", "sampling_backend": "pytorch", "dtype": "bfloat16", "device": "cpu",
            "disable_radix_cache": True, "model_path": "fake/model",
            "internal_states": [{"flushes": self.flushes}],
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
    if args.flush:
        app.router.add_route("POST", "/flush_cache", fake.flush_cache)
        app.router.add_route("GET", "/flush_cache", fake.flush_cache)
    return app


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    web.run_app(make_app(args), host=args.host, port=args.port, print=lambda *a: print(*a, flush=True),
                access_log=None, handle_signals=True)


if __name__ == "__main__":
    sys.exit(main())
