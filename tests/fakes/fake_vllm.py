"""A fake `vllm` launcher: `vllm serve`'s flags, the OpenAI completions stream and SD counters.

Run: python tests/fakes/fake_vllm.py serve MODEL --port PORT [--speculative-config JSON] ...
Unknown flags are rejected the way argparse (and so vLLM) does: exit 2, "unrecognized
arguments". Faults and acceptance come from FAKE_ENGINE_* variables (fake_engine_faults.py).
Startup: nothing listens until the "model" is loaded (connection refused), then /health is 200.

Like vLLM 0.32 (measured, fixtures/streams/README.md): Prometheus and the per-request
`metrics.speculative_decoding` (with --per-request-spec-decode-metrics) count drafted steps only;
ngram steps find no match with probability FAKE_VLLM_UNDRAFTED (default 0.4) and emit one
undrafted token; the last step's accepted drafts are counted before the cut at max_tokens.

Replay mode (FAKE_VLLM_REPLAY=fixtures/streams/vllm-*.json): the n-th request is answered with
the recorded SSE events of recorded request n mod R (token ids, chunking and usage chunk as the
real server sent them, paced by the recorded receipt offsets x FAKE_VLLM_REPLAY_SPEED, default
0 = no waiting), and /metrics sums the recorded per-request counters of the requests served.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from aiohttp import web  # noqa: E402

from fake_engine_faults import Faults, log  # noqa: E402
from recorded import sse_events  # noqa: E402

METHODS = ("ngram", "draft_model", "eagle", "eagle3", "mtp", "medusa", "suffix")
SPEC_KEYS = {"method", "model", "num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min",
             "draft_tensor_parallel_size", "quantization", "max_model_len", "disable_padded_drafter_batch"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vllm")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", prog="vllm serve")
    s.add_argument("model_tag", nargs="?")
    s.add_argument("--model")
    s.add_argument("--host", default=None)
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--speculative-config", type=json.loads)
    s.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None)
    s.add_argument("--max-num-seqs", type=int)
    s.add_argument("--max-num-batched-tokens", type=int)
    s.add_argument("--max-model-len", type=int)
    s.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    s.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
    s.add_argument("--data-parallel-size", "-dp", type=int, default=1)
    s.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    s.add_argument("--seed", type=int)
    s.add_argument("--served-model-name", nargs="+")
    s.add_argument("--tokenizer")
    s.add_argument("--dtype")
    s.add_argument("--quantization", "-q")
    s.add_argument("--kv-cache-dtype")
    s.add_argument("--enforce-eager", action="store_true")
    s.add_argument("--trust-remote-code", action="store_true")
    s.add_argument("--disable-log-stats", action="store_true")
    s.add_argument("--enable-log-requests", action="store_true")
    s.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None)
    s.add_argument("--compilation-config", "-O")
    s.add_argument("--per-request-spec-decode-metrics", choices=("none", "summary", "detailed"), default="none")
    args = p.parse_args(argv)
    if args.per_request_spec_decode_metrics != "none" and args.speculative_config is None:
        raise SystemExit("pydantic ValidationError: --per-request-spec-decode-metrics requires speculative "
                         "decoding to be enabled (via --speculative-config).")
    return args


def validate_spec(spec: dict | None) -> tuple[str | None, int]:
    """Mimic SpeculativeConfig's checks; returns (method, num_speculative_tokens)."""
    if spec is None:
        return None, 0
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise SystemExit(f"TypeError: SpeculativeConfig.__init__() got an unexpected keyword argument {sorted(unknown)[0]!r}")
    method = spec.get("method")
    if method not in METHODS:
        raise SystemExit(f"pydantic ValidationError: method {method!r} is not one of {METHODS}")
    k = spec.get("num_speculative_tokens")
    if not isinstance(k, int) or k < 1:
        raise SystemExit("pydantic ValidationError: num_speculative_tokens must be a positive integer")
    if method in ("draft_model", "eagle", "eagle3") and not spec.get("model"):
        raise SystemExit(f"ValueError: speculative method {method} needs 'model'")
    return method, k


class FakeVLLM:
    def __init__(self, args: argparse.Namespace, faults: Faults) -> None:
        self.args = args
        self.faults = faults
        self.model = (args.served_model_name or [args.model_tag or args.model])[0]
        self.method, self.k = validate_spec(args.speculative_config)
        self.accept = faults.accept[: self.k] + [0.0] * max(0, self.k - len(faults.accept))
        self.requests = 0
        self.drafts = self.draft_tokens = self.accepted = 0
        self.per_pos = [0] * self.k
        self.undrafted = float(os.environ.get("FAKE_VLLM_UNDRAFTED", "0.4")) if self.method == "ngram" else 0.0
        self.per_request = args.per_request_spec_decode_metrics
        replay = os.environ.get("FAKE_VLLM_REPLAY")
        self.replay = json.loads(Path(replay).read_text())["requests"] if replay else None
        self.replay_speed = float(os.environ.get("FAKE_VLLM_REPLAY_SPEED", "0"))

    def draw(self, rng, budget: int) -> list[tuple[int, bool, int]]:
        """(emitted, drafted, accepted before the cut) per decode step after the prefill token."""
        steps = []
        while budget > 0:
            drafted = self.k > 0 and rng.random() >= self.undrafted
            accepted = 0
            if drafted:
                for p in self.accept:
                    if rng.random() >= p:
                        break
                    accepted += 1
            emitted = min(1 + accepted, budget)
            steps.append((emitted, drafted, accepted))
            budget -= emitted
        return steps

    def count(self, drafted: bool, accepted: int) -> None:
        if drafted:
            self.drafts += 1
            self.draft_tokens += self.k
            self.accepted += accepted
            for i in range(accepted):
                self.per_pos[i] += 1

    def spec_metrics(self, steps: list[tuple[int, bool, int]]) -> dict:
        """The usage chunk's metrics.speculative_decoding (vllm/v1/metrics/stats.py's to_dict)."""
        drafted = [a for _, d, a in steps if d]
        histogram = [sum(1 for a in drafted if a == j) for j in range(self.k + 1)]
        accepted = sum(drafted)
        out = {"mean_acceptance_length": 1.0 + accepted / len(drafted) if drafted else 1.0,
               "draft_acceptance_rate": accepted / (self.k * len(drafted)) if drafted else 0.0,
               "acceptance_histogram": histogram, "num_spec_steps": len(drafted),
               "num_accepted_draft_tokens": accepted, "num_draft_tokens": self.k * len(drafted),
               "num_spec_tokens": self.k}
        if self.per_request == "detailed" and drafted:
            out["per_step_accepted"], out["per_step_drafted"] = drafted, [self.k] * len(drafted)
        return out

    async def replay_request(self, request: web.Request, index: int) -> web.StreamResponse:
        """Answer with recorded request index mod R: its events, chunking and usage chunk."""
        rec = self.replay[index % len(self.replay)]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        start = time.perf_counter()
        for offset, data in sse_events(rec["reads"]):
            if self.replay_speed > 0:
                await asyncio.sleep(max(0.0, offset * self.replay_speed - (time.perf_counter() - start)))
            event = json.loads(data) if data != "[DONE]" else None
            spec = ((event or {}).get("metrics") or {}).get("speculative_decoding")
            if spec:
                self.drafts += spec["num_spec_steps"]
                self.draft_tokens += spec["num_draft_tokens"]
                self.accepted += spec["num_accepted_draft_tokens"]
                for i, n in enumerate(spec["acceptance_histogram"][1:], 1):
                    for pos in range(min(i, self.k)):
                        self.per_pos[pos] += n
            await resp.write(b"data: " + data.encode() + b"\n\n")
        self.faults.record({"request": index, "replayed": rec["question_id"]})
        return resp

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt = body.get("prompt")
        if body.get("model") != self.model:
            return web.json_response({"object": "error", "message": f"The model `{body.get('model')}` does not exist.",
                                      "type": "NotFoundError", "code": 404}, status=404)
        if not (isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)):
            return web.json_response({"object": "error", "message": "fake expects a token-id prompt"}, status=400)
        index = self.requests
        self.requests += 1
        if self.replay is not None:
            return await self.replay_request(request, index)
        max_tokens = int(body.get("max_tokens") or 16)
        rng = self.faults.rng_for(prompt, index)
        stop = "length"
        if body.get("ignore_eos") is False and max_tokens > 2:  # the model "emits EOS" part-way
            max_tokens, stop = rng.randrange(2, max_tokens), "stop"
        steps = self.draw(rng, max_tokens - 1)
        sizes = [e for e, _, _ in steps]
        ids = [rng.randrange(100, 30000) for _ in range(max_tokens)]
        with_ids = bool(body.get("return_token_ids"))
        usage = (body.get("stream_options") or {}).get("include_usage")
        created = int(time.time())
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        emitted = 0
        for n, size in enumerate([1, *sizes]):
            if n:
                await asyncio.sleep(self.faults.step_ms / 1000)
                self.count(steps[n - 1][1], steps[n - 1][2])
            if n == 2 and self.faults.mode == "crash_midstream":
                os.kill(os.getpid(), signal.SIGKILL)
            if n == 2 and self.faults.mode == "hang_midstream":
                await asyncio.sleep(3600)
            chunk_ids = ids[emitted:emitted + size]
            emitted += size
            last = emitted >= max_tokens
            choice = {"index": 0, "text": "".join(f" t{t}" for t in chunk_ids), "logprobs": None,
                      "finish_reason": stop if last else None, "stop_reason": None}
            if with_ids:
                choice["token_ids"] = chunk_ids
                if n == 0:
                    choice["prompt_token_ids"] = prompt
            event = {"id": f"cmpl-{index}", "object": "text_completion", "created": created, "model": self.model,
                     "choices": [choice], "usage": None}
            await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        if usage:
            event = {"id": f"cmpl-{index}", "object": "text_completion", "created": created, "model": self.model,
                     "choices": [], "usage": {"prompt_tokens": len(prompt), "completion_tokens": emitted,
                                              "total_tokens": len(prompt) + emitted}}
            if self.per_request != "none":
                event["metrics"] = {"speculative_decoding": self.spec_metrics(steps)}
            await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        self.faults.record({"request": index, "prefill": 1, "steps": sizes, "drafted": [d for _, d, _ in steps],
                            "accepted": [a for _, _, a in steps]})
        return resp

    async def metrics(self, request: web.Request) -> web.Response:
        labels = f'engine="0",model_name="{self.model}"'
        lines = ["# HELP vllm:num_requests_running Number of requests in model execution batches.",
                 "# TYPE vllm:num_requests_running gauge", f"vllm:num_requests_running{{{labels}}} 0.0"]
        if self.method:
            for name, value in (("num_drafts", self.drafts), ("num_draft_tokens", self.draft_tokens),
                                ("num_accepted_tokens", self.accepted)):
                lines += [f"# TYPE vllm:spec_decode_{name} counter",
                          f"vllm:spec_decode_{name}_total{{{labels}}} {float(value)}",
                          f"vllm:spec_decode_{name}_created{{{labels}}} 1.7e9"]
            lines.append("# TYPE vllm:spec_decode_num_accepted_tokens_per_pos counter")
            for i, value in enumerate(self.per_pos):
                lines.append(f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{{labels},position="{i}"}} {float(value)}')
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/health", lambda r: web.Response())
        app.router.add_get("/version", lambda r: web.json_response({"version": self.faults.version or "0.33.0"}))
        app.router.add_get("/v1/models", lambda r: web.json_response(
            {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "vllm"}]}))
        return app


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    faults = Faults.from_env()
    args = parse_args(argv)
    faults.begin(argv, f"INFO fake vllm {faults.version or '0.33.0'} serve {args.model_tag}")
    fake = FakeVLLM(args, faults)
    if faults.mode == "slow_start":
        log(f"Loading model weights took {faults.delay:.2f} s (fake)")
        time.sleep(faults.delay)  # the port refuses connections meanwhile
    log(f"INFO Starting vLLM API server on http://{args.host}:{args.port}")
    web.run_app(fake.app(), host=args.host or "0.0.0.0", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
