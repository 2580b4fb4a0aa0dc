"""TensorRT-LLM: `trtllm-serve` launch with a generated YAML, token-id completions, per-request AL.

Launch (one server per EngineConfig):

    trtllm-serve MODEL --host 127.0.0.1 --port PORT --backend pytorch --max_batch_size MAX_BATCH
        --extra_llm_api_options WORKDIR/trtllm-<key>.yaml [engine_args...]

The YAML (`--extra_llm_api_options`, spelled `--config` by newer releases, which accept both)
turns block reuse off, so repeated prompts are prefilled every time, and maps the neutral
drafter names (docs/architecture.md, "Drafters") to `speculative_config`:

    ngram  {decoding_type: NGram, max_draft_len: K, max_matching_ngram_size: 4}
           (+ top-level disable_overlap_scheduler: true, which NGram required in 1.0-1.1)
    draft  {decoding_type: DraftTarget, max_draft_len: K, speculative_model_dir: DRAFT}
    eagle  {decoding_type: Eagle, max_draft_len: K, speculative_model_dir: DRAFT}
    eagle3 {decoding_type: Eagle3, max_draft_len: K, speculative_model_dir: DRAFT}
    mtp    {decoding_type: MTP, max_draft_len: K, num_nextn_predict_layers: K}

(K = --draft-length; `speculative_model_dir` is the spelling every release accepts, newer ones
alias it to `speculative_model`. EngineConfig.extra["llm_api_options"] is merged on top.)

Requests: POST /v1/completions with a token-id `prompt` and `detokenize: false`, so chunks
carry `token_ids`. TRT-LLM's request schema forbids unknown fields, so the body holds only
fields the schema defines (model, prompt, max_tokens, temperature, stream, stream_options,
ignore_eos, detokenize, seed).

Counters: every chunk carries `avg_decoded_tokens_per_iter` = tokens generated so far / the
request's decoding iterations so far (the PyTorch backend counts the context iteration that
produced the first token). From the first token-carrying chunk (L_0 tokens, average a_0) and
the last one (N tokens, average a_N):

    iterations_N = round(N / a_N)        iterations_0 = round(L_0 / a_0)   (1 if a_0 is absent)
    steps    = iterations_N - iterations_0        (verification steps after prefill)
    accepted = (N - L_0) - steps                  (each step yields one non-draft token)
    drafted  = steps * K                          (not for NGram, which may propose fewer)
    decode_steps = steps (D, every iteration); drafted_steps = steps when K is known (S = D)

so counter AL = (steps + accepted) / steps = (N - L_0) / steps, independent of how the
server grouped tokens into chunks.

Readiness: connection refused while loading, or 503 (with an `x-trtllm-server-state` header)
until GET /health answers 200. Point the engine at another launcher with SPEEDBENCH_TRTLLM_CMD
(e.g. "python tests/fakes/fake_trtllm.py") or EngineConfig.extra["command"].
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
import yaml

from pytest_speedbench.errors import EngineError, UsageError
from pytest_speedbench.engines.counters import Counters
from pytest_speedbench.engines.base import EngineConfig, HttpRequest, OpenAICompletionStream, ParsedEvent
from pytest_speedbench.engines.base import SamplingParams, native_drafter, require_draft_model
from pytest_speedbench.engines.lifecycle import ServerEngine, free_port
from pytest_speedbench.engines.spec import EngineSpec

ENV_COMMAND = "SPEEDBENCH_TRTLLM_CMD"
INSTALL_HINT = (
    "install it with `pip install tensorrt-llm` (NVIDIA GPU, CUDA 12/13; or use the NGC "
    "TensorRT-LLM container), or attach with --server-url"
)
DECODING_TYPES = {"ngram": "NGram", "draft": "DraftTarget", "eagle": "Eagle", "eagle3": "Eagle3", "mtp": "MTP"}
NEEDS_DRAFT_MODEL = ("draft", "eagle", "eagle3")
STATE_HEADER = "x-trtllm-server-state"


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def llm_api_options(config: EngineConfig) -> dict[str, Any]:
    """The YAML document passed with --extra_llm_api_options."""
    options: dict[str, Any] = {"kv_cache_config": {"enable_block_reuse": False}}
    if config.drafter != "none":
        decoding_type = native_drafter(config, DECODING_TYPES, "trtllm")
        spec: dict[str, Any] = {"decoding_type": decoding_type, "max_draft_len": config.draft_length}
        if config.drafter in NEEDS_DRAFT_MODEL:
            spec["speculative_model_dir"] = require_draft_model(config, "trtllm", f"{decoding_type} checkpoint")
        if config.drafter == "ngram":
            spec["max_matching_ngram_size"] = 4
            options["disable_overlap_scheduler"] = True
        if config.drafter == "mtp":
            spec["num_nextn_predict_layers"] = config.draft_length
        options["speculative_config"] = spec
    return _merge(options, dict(config.option("llm_api_options", {}) or {}))


def default_command() -> list[str] | None:
    exe = shutil.which("trtllm-serve")
    return [exe] if exe else None


def build_argv(config: EngineConfig, *, port: int, command: Sequence[str], options_path: Path) -> list[str]:
    if not config.model:
        raise UsageError("trtllm needs --model (a Hugging Face id, checkpoint directory or engine directory)")
    return [
        *command, config.model,
        "--host", "127.0.0.1", "--port", str(port),
        "--backend", "pytorch",
        "--max_batch_size", str(max(1, config.max_batch_size)),
        "--extra_llm_api_options", str(options_path),
        *config.engine_args,
    ]


def counters_from_avg(
    first_tokens: int,
    first_avg: float | None,
    total_tokens: int,
    final_avg: float | None,
    draft_length: int | None = None,
) -> Counters | None:
    """Per-request counters from avg_decoded_tokens_per_iter (formula in the module docstring)."""
    if not final_avg or final_avg <= 0 or total_tokens <= first_tokens:
        return None
    iterations = round(total_tokens / final_avg)
    first_iterations = round(first_tokens / first_avg) if first_avg and first_avg > 0 else 1
    steps = iterations - first_iterations
    if steps <= 0:
        return None
    accepted = (total_tokens - first_tokens) - steps
    if accepted < 0:
        return None
    counters: Counters = {"decode_steps": steps, "accepted": accepted, "engine_avg_decoded_tokens_per_iter": final_avg}
    if draft_length:
        counters["drafted"] = steps * draft_length
        counters["drafted_steps"] = steps  # every iteration verifies K drafts
    return counters


class TRTLLMParser(OpenAICompletionStream):
    """One stream: ids from `token_ids`, AL counters from the first and last averages."""

    __slots__ = ("speculative", "draft_length", "first_tokens", "first_avg", "total", "last_avg")
    engine = "TensorRT-LLM"
    missing_ids_hint = "detokenize: false was not honoured"

    def __init__(self, speculative: bool, draft_length: int | None) -> None:
        super().__init__()
        self.speculative = speculative
        self.draft_length = draft_length
        self.first_tokens = 0
        self.first_avg: float | None = None
        self.total = 0
        self.last_avg: float | None = None

    def parse(self, data: bytes) -> ParsedEvent | None:
        got = self.choice_and_ids(data)
        if got is None:
            return None
        choice, ids = got
        if not choice:
            return ParsedEvent([], False, None)
        avg = choice.get("avg_decoded_tokens_per_iter")
        if ids:
            if self.total == 0:
                self.first_tokens = len(ids)
                self.first_avg = avg
            self.total += len(ids)
        if avg is not None:
            self.last_avg = float(avg)
        finished = choice.get("finish_reason") is not None
        counters = None
        if finished and self.speculative:
            counters = counters_from_avg(self.first_tokens, self.first_avg, self.total, self.last_avg,
                                         self.draft_length)
        return ParsedEvent(list(ids), finished, counters)


class TRTLLMEngine(ServerEngine):
    name = "trtllm"

    def __init__(self, config: EngineConfig, workdir: Path) -> None:
        super().__init__(config, workdir)
        self._options: dict[str, Any] | None = None
        self._states: list[str] = []  # x-trtllm-server-state values seen while starting


    def _probe(self, client: Any) -> bool:
        r = client.get("/health")
        state = r.headers.get(STATE_HEADER)
        if state and (not self._states or self._states[-1] != state):
            self._states.append(state)
        return r.status_code == 200

    def _launch_server(self) -> None:
        port = free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._options = llm_api_options(self.config)
        options_path = self.workdir / f"trtllm-{self.config.key}-{port}.yaml"
        options_path.write_text(yaml.safe_dump(self._options, sort_keys=False))
        command = SPEC.require_launcher(self.config.option("command"))
        argv = build_argv(self.config, port=port, command=command, options_path=options_path)
        self._launch(argv, port, label="trtllm-serve", probe=self._probe, client_timeout=5.0)

    def _read_server(self) -> None:
        import httpx

        try:
            r = httpx.get(f"{self.base_url}/version", timeout=10.0)
            if r.status_code == 200:
                self._version = r.json().get("version")
        except httpx.HTTPError as exc:
            raise EngineError(f"cannot reach TensorRT-LLM server at {self.base_url}: {exc}") from None
        except ValueError:
            pass
        if self._version is None:
            for dist in ("tensorrt_llm", "tensorrt-llm"):
                try:
                    self._version = metadata.version(dist)
                    break
                except metadata.PackageNotFoundError:
                    continue

    def server_info(self) -> dict[str, Any]:
        return {
            "llm_api_options": self._options,
            "startup_states": list(self._states),
            "counters": "per request from avg_decoded_tokens_per_iter (first and last chunk)",
        }

    def build_request(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> HttpRequest:
        body: dict[str, Any] = {
            "model": self.config.model or "default",
            "prompt": list(prompt_ids),
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "ignore_eos": sampling.ignore_eos,
            "detokenize": False,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if sampling.seed is not None and sampling.temperature > 0:
            body["seed"] = sampling.seed
        return HttpRequest("/v1/completions", orjson.dumps(body))

    def new_parser(self) -> TRTLLMParser:
        speculative = self.config.drafter != "none"
        # NGram proposes up to K tokens, often fewer: its drafted count is unknown
        fixed_k = speculative and self.config.drafter != "ngram"
        return TRTLLMParser(speculative, self.config.draft_length if fixed_k else None)


SPEC = EngineSpec(
    "trtllm", TRTLLMEngine, drafters=("none", "ngram", "draft", "eagle", "eagle3", "mtp"),
    command_env=ENV_COMMAND, default_command=default_command, install_hint=INSTALL_HINT,
    parallel_flags={"tensor_parallel": "--tp_size", "pipeline_parallel": "--pp_size"},
    options={"llm_api_options": "keys merged into the --extra_llm_api_options YAML (e.g. kv_cache_config)"},
    python_package="tensorrt_llm",
)
