"""A fake `trtllm-serve`: its flags (click-style errors), the extra-options YAML, its completions stream.

Run: python tests/fakes/fake_trtllm.py MODEL --port PORT --extra_llm_api_options cfg.yaml ...
Unknown options fail like click does ("Error: No such option: --x", exit 2); unknown YAML keys
and unknown request fields are rejected like TensorRT-LLM's strict pydantic models. Every
stream chunk carries `avg_decoded_tokens_per_iter` = tokens so far / iterations so far, the
context iteration included. Startup: "ok" refuses connections until bound; "slow_start"
binds at once and answers /health with 503 + x-trtllm-server-state until loaded.
Faults and acceptance come from FAKE_ENGINE_* variables (fake_engine_faults.py).
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

import yaml  # noqa: E402
from aiohttp import web  # noqa: E402

from fake_engine_faults import Faults, draw_steps, log  # noqa: E402

TOP_KEYS = {"speculative_config", "kv_cache_config", "disable_overlap_scheduler", "cuda_graph_config",
            "enable_chunked_prefill", "max_num_tokens", "print_iter_log", "enable_attention_dp"}
BASE_SPEC = {"decoding_type", "max_draft_len", "max_total_draft_tokens", "speculative_model_dir",
             "speculative_model", "load_format"}
SPEC_KEYS = {
    "NGram": BASE_SPEC | {"max_matching_ngram_size", "is_keep_all", "is_use_oldest", "is_public_pool"},
    "DraftTarget": BASE_SPEC,
    "Eagle": BASE_SPEC | {"eagle3_one_model", "eagle_choices", "num_eagle_layers"},
    "Eagle3": BASE_SPEC | {"eagle3_one_model", "eagle_choices", "num_eagle_layers"},
    "MTP": BASE_SPEC | {"num_nextn_predict_layers", "use_relaxed_acceptance_for_thinking"},
}
REQUEST_FIELDS = {"model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens",
                  "n", "presence_penalty", "seed", "stop", "stream", "stream_options", "suffix", "temperature",
                  "top_p", "user", "use_beam_search", "top_k", "min_p", "repetition_penalty", "stop_token_ids",
                  "ignore_eos", "min_tokens", "skip_special_tokens", "return_context_logits", "detokenize",
                  "add_special_tokens", "response_format"}


class ClickStyleParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # click's wording and exit status
        if "unrecognized arguments" in message:
            message = "No such option: " + message.split(": ", 1)[1].split()[0]
        sys.stderr.write(f"Usage: trtllm-serve [OPTIONS] MODEL\nTry 'trtllm-serve --help' for help.\n\nError: {message}\n")
        sys.exit(2)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = ClickStyleParser(prog="trtllm-serve", add_help=True)
    p.add_argument("model")
    p.add_argument("--tokenizer")
    p.add_argument("--host", default="localhost")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", choices=["pytorch", "tensorrt", "trt", "_autodeploy"], default="pytorch")
    p.add_argument("--log_level", default="info")
    p.add_argument("--max_beam_width", type=int)
    p.add_argument("--max_batch_size", type=int)
    p.add_argument("--max_num_tokens", type=int)
    p.add_argument("--max_seq_len", type=int)
    p.add_argument("--tensor_parallel_size", "--tp_size", type=int, default=1)
    p.add_argument("--pipeline_parallel_size", "--pp_size", type=int, default=1)
    p.add_argument("--moe_expert_parallel_size", "--ep_size", type=int)
    p.add_argument("--gpus_per_node", type=int)
    p.add_argument("--free_gpu_memory_fraction", "--kv_cache_free_gpu_memory_fraction", type=float, default=0.9)
    p.add_argument("--trust_remote_code", action="store_true")
    p.add_argument("--revision")
    p.add_argument("--extra_llm_api_options", "--config", dest="extra_llm_api_options")
    p.add_argument("--enable_chunked_prefill", action="store_true")
    return p.parse_args(argv)


def load_options(path: str | None) -> dict:
    if not path:
        return {}
    options = yaml.safe_load(Path(path).read_text()) or {}
    unknown = set(options) - TOP_KEYS
    if unknown:
        raise SystemExit(f"pydantic ValidationError: TorchLlmArgs: {sorted(unknown)[0]}: Extra inputs are not permitted")
    spec = options.get("speculative_config")
    if spec is not None:
        kind = spec.get("decoding_type")
        if kind not in SPEC_KEYS:
            raise SystemExit(f"ValueError: Invalid decoding type: {kind}")
        extra = set(spec) - SPEC_KEYS[kind]
        if extra:
            raise SystemExit(f"pydantic ValidationError: {kind}DecodingConfig: {sorted(extra)[0]}: Extra inputs are not permitted")
        if kind in ("DraftTarget", "Eagle", "Eagle3") and not (spec.get("speculative_model_dir") or spec.get("speculative_model")):
            raise SystemExit(f"ValueError: Draft model must be provided for {kind}")
        if not isinstance(spec.get("max_draft_len"), int) or spec["max_draft_len"] < 1:
            raise SystemExit("ValueError: max_draft_len must be a positive integer")
    return options


class FakeTRTLLM:
    def __init__(self, args: argparse.Namespace, faults: Faults, options: dict) -> None:
        self.args = args
        self.faults = faults
        spec = options.get("speculative_config")
        self.k = spec["max_draft_len"] if spec else 0
        self.accept = faults.accept[: self.k] + [0.0] * max(0, self.k - len(faults.accept))
        self.ready_at = time.monotonic() + (faults.delay if faults.mode == "slow_start" else 0.0)
        self.requests = 0

    async def health(self, request: web.Request) -> web.Response:
        if time.monotonic() < self.ready_at:
            return web.Response(status=503, headers={"x-trtllm-server-state": "initializing"})
        return web.Response(status=200)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        extra = sorted(set(body) - REQUEST_FIELDS)
        if extra:
            return web.json_response({"object": "error", "type": "BadRequestError", "code": 400,
                                      "message": f"[{{'type': 'extra_forbidden', 'loc': ('body', '{extra[0]}'), "
                                                 f"'msg': 'Extra inputs are not permitted'}}]"}, status=400)
        prompt = body.get("prompt")
        if not (isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)):
            return web.json_response({"object": "error", "message": "fake expects a token-id prompt"}, status=400)
        index = self.requests
        self.requests += 1
        max_tokens = int(body.get("max_tokens") or 16)
        rng = self.faults.rng_for(prompt, index)
        sizes = draw_steps(rng, self.accept, max_tokens - 1) if self.k else [1] * (max_tokens - 1)
        ids = [rng.randrange(100, 30000) for _ in range(max_tokens)]
        detokenize = body.get("detokenize", True)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        emitted = 0
        for n, size in enumerate([1, *sizes]):
            if n:
                await asyncio.sleep(self.faults.step_ms / 1000)
            if n == 2 and self.faults.mode == "crash_midstream":
                os.kill(os.getpid(), signal.SIGKILL)
            if n == 2 and self.faults.mode == "hang_midstream":
                await asyncio.sleep(3600)
            chunk = ids[emitted:emitted + size]
            emitted += size
            choice = {"index": 0, "text": "" if not detokenize else "".join(f" t{t}" for t in chunk),
                      "token_ids": None if detokenize else chunk, "logprobs": None,
                      "finish_reason": "length" if emitted >= max_tokens else None, "stop_reason": None,
                      "avg_decoded_tokens_per_iter": emitted / (n + 1)}
            event = {"id": f"cmpl-{index}", "object": "text_completion", "created": int(time.time()),
                     "model": body.get("model"), "choices": [choice], "usage": None}
            await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            event = {"id": f"cmpl-{index}", "object": "text_completion", "created": int(time.time()),
                     "model": body.get("model"), "choices": [],
                     "usage": {"prompt_tokens": len(prompt), "completion_tokens": emitted,
                               "total_tokens": len(prompt) + emitted}}
            await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        self.faults.record({"request": index, "prefill": 1, "steps": sizes})
        return resp

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/version", lambda r: web.json_response({"version": self.faults.version or "1.2.1"}))
        app.router.add_post("/v1/completions", self.completions)
        return app


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    faults = Faults.from_env()
    args = parse_args(argv)
    faults.begin(argv, f"[TensorRT-LLM] TensorRT LLM version: {faults.version or '1.2.1'} (fake)")
    options = load_options(args.extra_llm_api_options)
    log(f"[TensorRT-LLM][INFO] extra options: {json.dumps(options)}")
    fake = FakeTRTLLM(args, faults, options)
    web.run_app(fake.app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
