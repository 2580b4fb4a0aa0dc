"""SGLang: native /generate protocol (token ids in, SSE out) and its SD counters.

Wire format (python/sglang/srt/entrypoints/http_server.py): POST /generate with `input_ids`,
`sampling_params` and `stream: true` answers `data: {json}\\n\\n` events and a final
`data: [DONE]`. Each event has `output_ids` (cumulative by default, incremental when the server
runs with --incremental-streaming-output) and `meta_info` with a running `completion_tokens`;
the final event's `meta_info` carries the SD counters, whose names drifted across 0.5.x.

Launch (when no --server-url is given), one server per EngineConfig:

    python -m sglang.launch_server --model-path MODEL --host 127.0.0.1 --port PORT
        --disable-radix-cache --max-running-requests MAX_BATCH
        CUDA_GRAPH_MAX_BS_FLAG MAX_BATCH [speculative flags] [engine_args...]

The radix (prefix) cache is off so repeated prompts are prefilled every time. The CUDA-graph
batch flag was renamed in 0.5.x (`--cuda-graph-max-bs` in 0.5.9, `--cuda-graph-max-bs-decode`
by 0.5.23): the launcher's `--help` is probed once and the spelling it lists is used; when the
probe fails the flag is left out (SGLang then picks its own capture sizes), and when it lists
neither the launch fails naming the version. Drafters (K = --draft-length):

    ngram  --speculative-algorithm NGRAM --speculative-num-draft-tokens K+1
           --speculative-ngram-max-bfs-breadth 1        (a chain of K, comparable to the others)
    draft  --speculative-algorithm STANDALONE --speculative-draft-model-path DRAFT  + chain flags
    eagle  --speculative-algorithm EAGLE      --speculative-draft-model-path DRAFT  + chain flags
    eagle3 --speculative-algorithm EAGLE3     --speculative-draft-model-path DRAFT  + chain flags
    mtp    --speculative-algorithm NEXTN     [--speculative-draft-model-path DRAFT] + chain flags
    chain flags: --speculative-num-steps K --speculative-eagle-topk 1 --speculative-num-draft-tokens K+1

(num-draft-tokens counts the verified root token too, hence K+1.) `--draft-model layers:N`
becomes the target's first N layers as a cached draft folder (models.truncated_draft).
Readiness: refused or 503 until GET /health_generate answers 200 (it runs a one-token
generation, so its timeout is long); the statuses seen are kept in the engine facts.

Between cases (measured on 0.5.23 on the real server tier, tests/test_sglang_real.py): POST /flush_cache resets the radix
cache, the KV pools and the NGRAM corpus (every earlier request's tokens, which otherwise
inflate a later case's acceptance), but only while no request runs or waits: busy, it answers
400 at once, or with `?timeout=S` it waits up to S seconds for idle (older servers ignore the
parameter, so the call is retried until the drain deadline). /server_info (0.5.23; the older
/get_server_info still answers, with a deprecation warning) gives the resolved speculative
settings and attention backend, kept in the engine facts in launch and attach mode. Point the engine at another launcher with SPEEDBENCH_SGLANG_CMD (e.g.
"python tests/fakes/fake_sglang_launch.py") or EngineConfig.extra["command"].
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from collections.abc import Sequence
from importlib import metadata, util
from typing import Any

import orjson

from pytest_speedbench.errors import EngineError, RequestError, UsageError
from pytest_speedbench.engines.counters import Counters
from pytest_speedbench.engines.base import (
    EngineConfig,
    HttpRequest,
    ParsedEvent,
    SamplingParams,
    StateReset,
    decode_event,
    native_drafter,
    require_draft_model,
)
from pytest_speedbench.engines.lifecycle import ServerEngine, free_port, override_command
from pytest_speedbench.engines.spec import EngineSpec

# Spellings of the same counter across SGLang versions, newest first.
ACCEPTED_KEYS = ("spec_num_correct_drafts", "spec_accepted_drafts", "spec_accept_token_num")
DRAFTED_KEYS = ("spec_num_proposed_drafts", "spec_proposed_drafts", "spec_draft_token_num")
HISTOGRAM_KEYS = ("spec_correct_drafts_histogram", "spec_accept_histogram")


def _first(meta: dict[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        if meta.get(key) is not None:
            return meta[key]
    return None


def histogram_to_per_pos(histogram: Sequence[int]) -> list[int]:
    """SGLang's histogram[k] = steps that accepted exactly k drafts -> steps accepting >= i."""
    per_pos = []
    for i in range(1, len(histogram)):
        per_pos.append(int(sum(histogram[i:])))
    return per_pos


def normalize_meta_counters(meta: dict[str, Any]) -> Counters | None:
    """meta_info -> {decode_steps, drafted_steps, accepted, drafted, accepted_per_pos}; None without SD counters.

    SGLang's own `spec_accept_length` counts the prefill token (completion_tokens / verify_ct),
    so it is recorded but never used: per-draft AL = 1 + accepted / drafted steps.
    """
    steps = meta.get("spec_verify_ct")
    if not steps:
        return None
    accepted = _first(meta, ACCEPTED_KEYS)
    if accepted is None and meta.get("completion_tokens") is not None:
        # Oldest servers report only completion_tokens and verify_ct: the prefill token is
        # not a verification step and every step yields one non-draft token.
        accepted = int(meta["completion_tokens"]) - 1 - int(steps)
    if accepted is None:
        return None
    # spec_verify_ct counts every decode step (NGRAM verifies also when nothing matched), and
    # SGLang's own acceptance length treats each as drafted: D = S = spec_verify_ct.
    counters: Counters = {"decode_steps": int(steps), "drafted_steps": int(steps), "accepted": int(accepted)}
    drafted = _first(meta, DRAFTED_KEYS)
    if drafted is not None:
        counters["drafted"] = int(drafted)
    histogram = _first(meta, HISTOGRAM_KEYS)
    if histogram:
        counters["accepted_per_pos"] = histogram_to_per_pos(histogram)
    if meta.get("spec_accept_length") is not None:
        counters["engine_accept_length"] = float(meta["spec_accept_length"])
    return counters


# -- launch ----------------------------------------------------------------------------------

ENV_COMMAND = "SPEEDBENCH_SGLANG_CMD"
INSTALL_HINT = "install it with `pip install \"sglang[all]\"` (needs a CUDA GPU), or attach with --server-url"
ALGORITHMS = {"ngram": "NGRAM", "draft": "STANDALONE", "eagle": "EAGLE", "eagle3": "EAGLE3", "mtp": "NEXTN"}
NEEDS_DRAFT_MODEL = ("draft", "eagle", "eagle3")
#: spellings of the CUDA-graph max-batch flag, newest first
CUDA_GRAPH_MAX_BS_FLAGS = ("--cuda-graph-max-bs-decode", "--cuda-graph-max-bs")
_FLAG = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*")


def default_command() -> list[str] | None:
    return [sys.executable, "-m", "sglang.launch_server"] if util.find_spec("sglang") is not None else None


def installed_version() -> str | None:
    try:
        return metadata.version("sglang")
    except metadata.PackageNotFoundError:
        return None


#: `--help` answers per launcher command, for this process: importing SGLang takes tens of
#: seconds on a small CPU (56 s measured under load), so each launcher is probed once
_PROBED: dict[tuple[tuple[str, ...], frozenset[tuple[str, str]]], frozenset[str] | None] = {}


def probe_flags(command: Sequence[str], timeout_s: float = 300.0) -> frozenset[str] | None:
    """The flags `<launcher> --help` lists; None when the probe fails (no guessing then)."""
    key = (tuple(command), frozenset(os.environ.items()))  # same launcher, same environment
    if key not in _PROBED:
        _PROBED[key] = _probe_flags(command, timeout_s)
    return _PROBED[key]


def _probe_flags(command: Sequence[str], timeout_s: float) -> frozenset[str] | None:
    try:
        proc = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    flags = frozenset(_FLAG.findall(proc.stdout))
    return flags or None


def speculative_args(config: EngineConfig) -> list[str]:
    if config.drafter == "none":
        return []
    algorithm = native_drafter(config, ALGORITHMS, "sglang")
    k = config.draft_length
    args = ["--speculative-algorithm", algorithm]
    if config.drafter == "ngram":
        return args + ["--speculative-num-draft-tokens", str(k + 1), "--speculative-ngram-max-bfs-breadth", "1"]
    if config.drafter in NEEDS_DRAFT_MODEL:
        require_draft_model(config, "sglang", f"{algorithm} draft checkpoint")
    if config.draft_model:
        args += ["--speculative-draft-model-path", config.draft_model]
    return args + ["--speculative-num-steps", str(k), "--speculative-eagle-topk", "1",
                   "--speculative-num-draft-tokens", str(k + 1)]


def cuda_graph_args(max_bs: int, flags: frozenset[str] | None, version: str | None) -> list[str]:
    if flags is None:
        return []
    for flag in CUDA_GRAPH_MAX_BS_FLAGS:
        if flag in flags:
            return [flag, str(max_bs)]
    raise EngineError(
        f"SGLang {version or '(unknown version)'} accepts none of the CUDA-graph batch flags "
        f"{', '.join(CUDA_GRAPH_MAX_BS_FLAGS)}; pass the right one through --engine-args"
    )


def build_argv(
    config: EngineConfig,
    *,
    port: int,
    command: Sequence[str],
    flags: frozenset[str] | None = None,
    version: str | None = None,
) -> list[str]:
    """The full launch command for one engine instance (flags: what the launcher's --help lists)."""
    if not config.model:
        raise UsageError("sglang needs --model (a Hugging Face id or a local checkpoint directory)")
    max_bs = max(1, config.max_batch_size)
    argv = [
        *command, "--model-path", config.model,
        "--host", "127.0.0.1", "--port", str(port),
        "--disable-radix-cache",
        "--max-running-requests", str(max_bs),
        *cuda_graph_args(max_bs, flags, version),
        *speculative_args(config),
        *config.engine_args,
    ]
    if flags is not None:
        unknown = [a for a in argv[len(command):] if a.startswith("--") and a not in flags]
        if unknown:
            raise EngineError(
                f"SGLang {version or '(unknown version)'} does not accept {', '.join(unknown)} "
                f"(checked against `{' '.join(command)} --help`)"
            )
    return argv


class SGLangParser:
    """Per-request state: how many output ids were seen, cumulative or incremental."""

    __slots__ = ("seen", "incremental")

    def __init__(self, incremental: bool | None = None) -> None:
        self.seen = 0
        self.incremental = incremental

    def parse(self, data: bytes) -> ParsedEvent | None:
        event = decode_event(data, "SGLang")
        if event is None:
            return None
        if "error" in event and "output_ids" not in event:
            raise RequestError(f"SGLang reported an error: {event['error']}")
        ids = event.get("output_ids") or []
        meta = event.get("meta_info") or {}
        new_ids = self._new_ids(ids, meta.get("completion_tokens"))
        finish = meta.get("finish_reason")
        finished = finish is not None
        counters = normalize_meta_counters(meta) if finished else None
        if finished:
            self._check_final(finish, meta.get("completion_tokens"), counters)
        return ParsedEvent(new_ids, finished, counters)

    def _check_final(self, finish: Any, completion_tokens: int | None, counters: Counters | None) -> None:
        """A finished stream must agree with itself: a length finish means exactly `length`
        tokens arrived, and no step accepts more drafts than it proposed."""
        length = finish.get("length") if isinstance(finish, dict) and finish.get("type") == "length" else None
        if isinstance(length, int) and self.seen != length:
            raise RequestError(
                f"SGLang stream inconsistent: finished for length {length} but {self.seen} tokens arrived "
                f"(completion_tokens {completion_tokens}); tokens were lost or went backwards"
            )
        if counters and counters.get("drafted") is not None and counters["accepted"] > counters["drafted"]:
            raise RequestError(
                f"SGLang counters inconsistent: {counters['accepted']} accepted drafts > "
                f"{counters['drafted']} proposed over {counters['decode_steps']} steps"
            )

    def _new_ids(self, ids: list[int], completion_tokens: int | None) -> list[int]:
        if self.incremental is None and self.seen > 0 and completion_tokens is not None:
            # Both modes look alike until the second token-carrying event; the running
            # completion_tokens then tells them apart without guessing from the ids.
            if len(ids) == completion_tokens:
                self.incremental = False
            elif len(ids) == completion_tokens - self.seen:
                self.incremental = True
        if self.incremental or self.seen == 0:
            new = list(ids)
        else:
            if len(ids) < self.seen:
                raise RequestError(
                    f"SGLang output_ids went backwards: {len(ids)} ids after {self.seen} were seen"
                )
            new = ids[self.seen:]
        if completion_tokens is not None and completion_tokens < self.seen:
            raise RequestError(
                f"SGLang completion_tokens went backwards: {completion_tokens} after {self.seen}"
            )
        self.seen += len(new)
        return new


#: /server_info keys kept in the results' engine facts (the rest are ~480 server_args)
SERVER_INFO_FACTS = (
    "version", "speculative_algorithm", "speculative_num_draft_tokens", "speculative_num_steps",
    "speculative_eagle_topk", "speculative_draft_model_path", "speculative_ngram_max_bfs_breadth",
    "speculative_ngram_min_bfs_breadth", "speculative_ngram_match_type", "speculative_ngram_max_trie_depth",
    "speculative_draft_attention_backend", "attention_backend", "decode_attention_backend",
    "prefill_attention_backend", "sampling_backend", "dtype", "device", "max_running_requests",
    "max_total_num_tokens", "disable_radix_cache", "incremental_streaming_output", "launch_command",
)
#: seconds a reset waits for the server to finish what is in flight before flushing
FLUSH_DRAIN_S = 60.0


def server_info_facts(info: dict[str, Any]) -> dict[str, Any]:
    """The engine facts a reader needs to trust the SD figures (what actually ran)."""
    facts = {key: info[key] for key in SERVER_INFO_FACTS if key in info}
    if not facts and info:
        facts["server_info_keys"] = sorted(info)[:40]
    return facts


def resolve_draft_model(config: EngineConfig) -> EngineConfig:
    """`layers:N` -> a cached folder with the target's first N layers (a STANDALONE draft)."""
    from pytest_speedbench.models import parse_layers_spec, truncated_draft

    n = parse_layers_spec(config.draft_model)
    if n is None:
        return config
    if not config.model:
        raise UsageError("sglang --draft-model layers:N needs --model (the target whose layers are kept)")
    return replace(config, draft_model=str(truncated_draft(config.model, n)))


class SGLangEngine(ServerEngine):
    name = "sglang"
    #: NGRAM keeps a corpus of every earlier request's tokens (flushed by /flush_cache)
    cross_request_drafters = frozenset({"ngram"})
    flush_drain_s: float = FLUSH_DRAIN_S

    def __init__(self, config: EngineConfig, workdir) -> None:
        super().__init__(config, workdir)
        self._server_info: dict[str, Any] = {}
        self._flags_probed: bool | None = None
        self._readiness: list[str] = []

    # -- lifecycle --
    def _read_server(self) -> None:
        self._server_info = self._probe_server_info()
        self._version = self._server_info.get("version")

    def _launch_server(self) -> None:
        command = SPEC.require_launcher(self.config.option("command"))
        overridden = override_command(ENV_COMMAND, self.config.option("command")) is not None
        version = None if overridden else installed_version()
        flags = probe_flags(command)
        self._flags_probed = flags is not None
        port = free_port()
        argv = build_argv(resolve_draft_model(self.config), port=port, command=command, flags=flags, version=version)
        self._readiness = []
        # /health_generate runs a one-token generation: give it time to answer
        self._launch(argv, port, label="sglang", client_timeout=60.0, probe=self._ready)

    def _ready(self, client: Any) -> bool:
        """One readiness probe; each change of answer (refused, 503, 200) is kept for the facts."""
        import httpx

        try:
            seen = str(client.get("/health_generate").status_code)
        except httpx.HTTPError as exc:
            seen = "refused" if isinstance(exc, httpx.ConnectError) else type(exc).__name__
        if not self._readiness or self._readiness[-1] != seen:
            self._readiness.append(seen)
        return seen == "200"

    def _probe_server_info(self) -> dict[str, Any]:
        import httpx

        from pytest_speedbench.errors import EngineError

        try:
            with httpx.Client(base_url=self.base_url, timeout=10.0) as client:
                info = {}
                for path in ("/server_info", "/get_server_info"):
                    r = client.get(path)
                    if r.status_code == 200:
                        info = r.json()
                        break
                r = client.get("/get_model_info")
                if r.status_code == 200:
                    info["model_info"] = r.json()
                return info
        except httpx.HTTPError as exc:
            raise EngineError(f"cannot reach SGLang server at {self.base_url}: {exc}") from None

    def server_info(self) -> dict[str, Any]:
        return {
            "speculative_algorithm": self._server_info.get("speculative_algorithm"),
            "model": (self._server_info.get("model_info") or {}).get("model_path")
            or self._server_info.get("model_path"),
            "flags_probed": self._flags_probed,
            "server_info": server_info_facts(self._server_info),
            "readiness": list(self._readiness) or None,
        }

    # -- between cases --
    def reset_call(self) -> StateReset | None:
        """POST /flush_cache once the server is idle; None when the server has no such route."""
        import httpx

        cleared = ["radix cache", "KV pools"] + (["NGRAM corpus"] if self.config.drafter == "ngram" else [])
        deadline = time.monotonic() + self.flush_drain_s
        answers: list[str] = []
        with httpx.Client(base_url=self.base_url, timeout=self.flush_drain_s + 30.0) as client:
            while True:
                wait = max(0.0, round(deadline - time.monotonic(), 1))
                try:
                    r = client.post("/flush_cache", params={"timeout": wait})
                except httpx.HTTPError as exc:
                    # the case's own requests will say what is wrong with the server
                    return StateReset("none", ok=False, warning=(
                        f"SGLang /flush_cache at {self.base_url} failed ({type(exc).__name__}: {exc}): "
                        "engine state was not reset"))
                if r.status_code == 200:
                    return StateReset("flush_cache", cleared=tuple(cleared),
                                      detail=f"POST /flush_cache -> 200 after {len(answers)} busy answer(s)")
                if r.status_code in (404, 405):
                    return None
                answers.append(f"{r.status_code} {r.text.strip()[:80]}")
                if time.monotonic() >= deadline:
                    return StateReset("none", ok=False, detail="; ".join(answers[-3:]), warning=(
                        f"SGLang at {self.base_url} did not become idle within {self.flush_drain_s:g} s, so "
                        f"/flush_cache did not run (last answer: {answers[-1]}): requests still running "
                        "there and earlier cases' NGRAM corpus or prefix cache can change this case's figures"))
                time.sleep(0.5)

    # -- protocol --
    def build_request(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> HttpRequest:
        params: dict[str, Any] = {
            "temperature": sampling.temperature,
            "max_new_tokens": sampling.max_new_tokens,
            "ignore_eos": sampling.ignore_eos,
        }
        if sampling.seed is not None and sampling.temperature > 0:
            params["sampling_seed"] = sampling.seed
        body = {"input_ids": list(prompt_ids), "sampling_params": params, "stream": True}
        return HttpRequest("/generate", orjson.dumps(body))

    def new_parser(self) -> SGLangParser:
        return SGLangParser(self.config.option("incremental_output"))


SPEC = EngineSpec(
    "sglang", SGLangEngine, drafters=("none", "ngram", "draft", "eagle", "eagle3", "mtp"),
    command_env=ENV_COMMAND, default_command=default_command, install_hint=INSTALL_HINT,
    parallel_flags={"tensor_parallel": "--tp-size", "pipeline_parallel": "--pp-size", "data_parallel": "--dp-size",
                    "nnodes": "--nnodes", "node_rank": "--node-rank", "dist_init_addr": "--dist-init-addr"},
    options={"incremental_output": "the server streams incremental token ids (true) or cumulative ones "
                                    "(false); default: probed from the first event"},
)
