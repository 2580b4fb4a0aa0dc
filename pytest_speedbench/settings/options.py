"""Command line + ini + speedbench.yaml -> one validated Settings object.

Precedence: command line, then speedbench.yaml, then ini keys (`speedbench_<name>`), then
defaults. Every bad value is a UsageError naming the value and the valid ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from pytest_speedbench.engines import DRAFTERS, ENGINES
from pytest_speedbench.errors import UsageError, bad_value
from pytest_speedbench.settings.matrix import BUCKETS, SPLITS

Parser = Callable[[str], Any]


def _split_list(raw: Any) -> list[str]:
    if isinstance(raw, (list, tuple)):
        items = [str(x).strip() for x in raw]
    else:
        items = [x.strip() for x in str(raw).split(",")]
    return [x for x in items if x]


@dataclass(frozen=True)
class OptionSpec:
    """One user-facing setting; the plugin registers a CLI flag and an ini key from it."""

    name: str  # Settings attribute and yaml key
    flag: str  # command line flag
    help: str
    kind: str = "str"  # str | int | float | bool | list_str | list_int | list_float
    default: Any = None
    choices: tuple[str, ...] | None = None

    @property
    def ini_name(self) -> str:
        return "speedbench_" + self.name


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("engine", "--engine", "engines to benchmark (comma list)", "list_str", ["hf"], tuple(ENGINES)),
    OptionSpec("drafter", "--drafter", "drafters (comma list; none = autoregressive)", "list_str",
               ["none", "ngram", "draft"], DRAFTERS),
    OptionSpec("split", "--split", "SPEED-Bench splits (comma list)", "list_str", ["qualitative"], SPLITS),
    OptionSpec("bucket", "--bucket", "throughput input-length buckets (comma list)", "list_str",
               list(BUCKETS), BUCKETS),
    OptionSpec("batch_size", "--batch-size", "concurrent requests (comma list)", "list_int", [1]),
    OptionSpec("temperature", "--temperature", "sampling temperatures (comma list)", "list_float", [0.0]),
    OptionSpec("model", "--model", "target model: bundled name, local dir, GGUF file or hub id", "str", None),
    OptionSpec("tokenizer", "--tokenizer", "tokenizer (defaults to the model)", "str", None),
    OptionSpec("draft_model", "--draft-model", "draft model path, or layers:N for an early-exit draft", "str", None),
    OptionSpec("draft_length", "--draft-length", "draft tokens per step (gamma)", "int", 3),
    OptionSpec("server_url", "--server-url",
               "attach to running server(s): URL, or drafter=URL,... per drafter", "str", None),
    OptionSpec("dataset", "--dataset", "dataset: 'bundled', a prepared directory, or a file", "str", "bundled"),
    OptionSpec("category", "--category", "qualitative categories to keep (comma list)", "list_str", []),
    OptionSpec("num_prompts", "--num-prompts", "prompts per category (stratified, deterministic)", "int", 4),
    OptionSpec("output_len", "--output-len", "max new tokens per turn", "int", 64),
    OptionSpec("warmup", "--warmup", "warmup requests per case, excluded from metrics", "int", 1),
    OptionSpec("device", "--device", "device for in-process engines (auto, cpu, cuda, cuda:N)", "str", "auto"),
    OptionSpec("engine_args", "--engine-args", "extra arguments passed to the engine launcher", "str", None),
    OptionSpec("request_timeout", "--request-timeout", "seconds without progress before a request fails",
               "float", 300.0),
    OptionSpec("ready_timeout", "--ready-timeout", "seconds to wait for a launched engine to be ready",
               "float", 600.0),
    OptionSpec("chat_template", "--chat-template", "apply the tokenizer's chat template (on/off)", "bool", True),
    OptionSpec("seed", "--speedbench-seed", "seed for prompt sampling and bootstrap", "int", 0),
    OptionSpec("config", "--speedbench-config", "path to speedbench.yaml", "str", None),
    OptionSpec("json", "--speedbench-json", "write results JSON to this path", "str", None),
    OptionSpec("autosave", "--speedbench-autosave", "save results under .speedbench/ (never overwrites)",
               "bool", False),
    OptionSpec("storage", "--speedbench-storage", "directory for autosaved results", "str", ".speedbench"),
    OptionSpec("compare", "--speedbench-compare", "baseline results: PATH, 'latest' or a run number NNNN",
               "str", None),
    OptionSpec("fail", "--speedbench-fail",
               "regression rules, e.g. acceptance_length:-3%,speedup_user_tps:-5%,ttft_s.p99:+10%", "str", None),
    OptionSpec("strict", "--speedbench-strict", "fail on tolerance alone, ignoring the confidence interval",
               "bool", False),
    OptionSpec("gpus", "--speedbench-gpus", "GPU ids to spread xdist workers over (comma list)", "str", None),
)

OPTION_BY_NAME: dict[str, OptionSpec] = {o.name: o for o in OPTIONS}


def _as_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"expected a boolean (true/false), got {raw!r}")


def coerce(spec: OptionSpec, raw: Any) -> Any:
    """Turn a raw CLI/ini/yaml value into the typed value, validating choices and ranges."""
    what = spec.flag
    try:
        if spec.kind == "bool":
            return _as_bool(raw)
        if spec.kind == "int":
            return int(raw)
        if spec.kind == "float":
            return float(raw)
        if spec.kind == "str":
            return None if raw is None else str(raw)
        items = _split_list(raw)
        if spec.kind == "list_int":
            return [int(x) for x in items]
        if spec.kind == "list_float":
            return [float(x) for x in items]
    except ValueError:
        raise UsageError(f"{what}: {raw!r} is not a valid {spec.kind.replace('list_', 'list of ')}") from None
    if spec.choices is not None:
        for item in items:
            if item not in spec.choices:
                raise bad_value(f"{spec.name.replace('_', ' ')} in {what}", item, spec.choices)
    return items


@dataclass
class Settings:
    engine: list[str] = field(default_factory=lambda: ["hf"])
    drafter: list[str] = field(default_factory=lambda: ["none", "ngram", "draft"])
    split: list[str] = field(default_factory=lambda: ["qualitative"])
    bucket: list[str] = field(default_factory=lambda: list(BUCKETS))
    batch_size: list[int] = field(default_factory=lambda: [1])
    temperature: list[float] = field(default_factory=lambda: [0.0])
    model: str | None = None
    tokenizer: str | None = None
    draft_model: str | None = None
    draft_length: int = 3
    server_url: str | None = None
    dataset: str = "bundled"
    category: list[str] = field(default_factory=list)
    num_prompts: int = 4
    output_len: int = 64
    warmup: int = 1
    device: str = "auto"
    engine_args: str | None = None
    request_timeout: float = 300.0
    ready_timeout: float = 600.0
    chat_template: bool = True
    seed: int = 0
    config: str | None = None
    json: str | None = None
    autosave: bool = False
    storage: str = ".speedbench"
    compare: str | None = None
    fail: str | None = None
    strict: bool = False
    gpus: str | None = None
    #: per-engine overrides from speedbench.yaml's `engines:` section (batch_size, engine_args, ...)
    per_engine: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: sections of speedbench.yaml other modules read (gates, thresholds, ...)
    sections: dict[str, Any] = field(default_factory=dict)
    #: names set explicitly on the command line or in speedbench.yaml (not defaults)
    explicit: frozenset[str] = frozenset()

    def validate(self) -> None:
        for bs in self.batch_size:
            if bs < 1:
                raise UsageError(f"--batch-size: {bs} is not a positive integer; batch sizes start at 1")
        for t in self.temperature:
            if not (0.0 <= t <= 2.0) or math.isnan(t):
                raise UsageError(f"--temperature: {t:g} is out of range; valid temperatures are 0 to 2")
        for name in ("num_prompts", "output_len", "draft_length"):
            if getattr(self, name) < 1:
                raise UsageError(f"{OPTION_BY_NAME[name].flag}: {getattr(self, name)} must be at least 1")
        if self.warmup < 0:
            raise UsageError(f"--warmup: {self.warmup} must be 0 or more")
        for name in ("request_timeout", "ready_timeout"):
            if getattr(self, name) <= 0:
                raise UsageError(f"{OPTION_BY_NAME[name].flag}: must be positive")
        for engine, overrides in self.per_engine.items():
            if engine not in ENGINES:
                raise bad_value("engine in speedbench.yaml 'engines:' section", engine, ENGINES)
            for bs in overrides.get("batch_size", []):
                if bs < 1:
                    raise UsageError(f"engines.{engine}.batch_size: {bs} is not a positive integer")

    def batch_sizes_for(self, engine: str) -> list[int]:
        return list(self.per_engine.get(engine, {}).get("batch_size", self.batch_size))

    def server_urls(self) -> dict[str, str]:
        """`--server-url` as {drafter or '*': url}."""
        if not self.server_url:
            return {}
        urls: dict[str, str] = {}
        for part in _split_list(self.server_url):
            key, sep, value = part.partition("=")
            if sep and "://" not in key:
                if key not in DRAFTERS:
                    raise bad_value("drafter in --server-url", key, DRAFTERS)
                urls[key] = value
            else:
                urls["*"] = part
        return urls


def load_yaml(path: Path) -> dict[str, Any]:
    """Read speedbench.yaml; syntax errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read speedbench config {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise UsageError(f"malformed speedbench config {where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise UsageError(f"speedbench config {path} must be a mapping of settings, got {type(data).__name__}")
    return dict(data)


SECTION_KEYS = ("gates", "thresholds", "fail", "report")


def build_settings(
    cli: Mapping[str, Any],
    ini: Mapping[str, Any] | None = None,
    yaml_path: Path | None = None,
) -> Settings:
    """Merge the sources (CLI wins) and validate. `cli`/`ini` hold raw values or None."""
    ini = ini or {}
    file_values: dict[str, Any] = load_yaml(yaml_path) if yaml_path else {}
    per_engine_raw = file_values.pop("engines", {}) or {}
    sections = {k: file_values.pop(k) for k in SECTION_KEYS if k in file_values}
    valid_keys = {f.name for f in fields(Settings)} - {"per_engine", "sections", "explicit"}
    for key in file_values:
        if key.replace("-", "_") not in valid_keys:
            raise bad_value(f"setting in {yaml_path}", key, sorted(valid_keys | {"engines", *SECTION_KEYS}))
    values: dict[str, Any] = {}
    explicit: set[str] = set()
    for spec in OPTIONS:
        raw = cli.get(spec.name)
        source_is_explicit = raw is not None
        if raw is None:
            raw = file_values.get(spec.name, file_values.get(spec.name.replace("_", "-")))
            source_is_explicit = raw is not None
        if raw is None:
            raw = ini.get(spec.name)
        if raw is None or raw == "":
            continue
        values[spec.name] = coerce(spec, raw)
        if source_is_explicit:
            explicit.add(spec.name)
    per_engine: dict[str, dict[str, Any]] = {}
    if not isinstance(per_engine_raw, Mapping):
        raise UsageError(f"{yaml_path}: 'engines' must map engine names to settings")
    for engine, overrides in per_engine_raw.items():
        overrides = dict(overrides or {})
        parsed: dict[str, Any] = {}
        for key, raw in overrides.items():
            spec = OPTION_BY_NAME.get(key.replace("-", "_"))
            parsed[key.replace("-", "_")] = coerce(spec, raw) if spec else raw
        per_engine[str(engine)] = parsed
    settings = Settings(**values, per_engine=per_engine, sections=sections, explicit=frozenset(explicit))
    settings.validate()
    return settings
