"""Command line + ini + speedbench.yaml -> one validated Settings object.

Precedence: command line, then speedbench.yaml, then ini keys (`speedbench_<name>`), then
defaults. Every bad value is a UsageError naming the value and the valid ones.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from pytest_speedbench.engines import DRAFTERS, engine_names, get_spec
from pytest_speedbench.errors import UsageError, bad_value
from pytest_speedbench.settings.matrix import BUCKETS, SPLITS

Parser = Callable[[str], Any]

#: the fields of a case's settings fingerprint (results/fingerprint.py), which
#: --speedbench-allow-change may name, in the order messages list them
FINGERPRINT_FIELDS: tuple[str, ...] = (
    "output_len", "ignore_eos", "dataset", "num_prompts", "model", "engine", "engine_version",
    "drafter", "draft_length", "draft_model", "rounds", "temperature", "hardware",
    # recorded only when set (open-loop arrivals, latency SLOs), so closed-loop runs keep
    # matching baselines saved before these fields existed
    "burstiness", "goodput",
)


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
    kind: str = "str"  # str | int | float | bool | list_str | list_int | list_float | list_rate
    default: Any = None
    #: valid values, or a function giving them (engines: read from the registry when needed)
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    #: environment variable that replaces the default (as pytest-benchmark's PYTEST_BENCHMARK_STORAGE)
    env: str | None = None

    def default_value(self) -> Any:
        """The default: the environment variable's value when set and not empty, else `default`."""
        if self.env and os.environ.get(self.env):
            return os.environ[self.env]
        return copy.deepcopy(self.default)

    def valid_choices(self) -> tuple[str, ...] | None:
        return self.choices() if callable(self.choices) else self.choices

    @property
    def ini_name(self) -> str:
        return "speedbench_" + self.name


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("engine", "--engine", "engines to benchmark (comma list)", "list_str", ["hf"], engine_names),
    OptionSpec("drafter", "--drafter", "drafters (comma list; none = autoregressive)", "list_str",
               ["none", "ngram", "draft"], DRAFTERS),
    OptionSpec("split", "--split", "SPEED-Bench splits (comma list)", "list_str", ["qualitative"], SPLITS),
    OptionSpec("bucket", "--bucket", "throughput input-length buckets (comma list)", "list_str",
               list(BUCKETS), BUCKETS),
    OptionSpec("batch_size", "--batch-size", "concurrent requests (comma list)", "list_int", [1]),
    OptionSpec("request_rate", "--request-rate",
               "open-loop load: requests per second (comma list; inf = all at once), arrivals Poisson or "
               "gamma (--burstiness), --batch-size capping the requests in flight (ids gain -rR); "
               "unset: closed loop, exactly batch-size requests in flight", "list_rate", []),
    OptionSpec("burstiness", "--burstiness",
               "gamma shape of the gaps between arrivals under --request-rate: 1 = Poisson, < 1 burstier, "
               "> 1 more regular", "float", 1.0),
    OptionSpec("goodput", "--goodput",
               "latency SLOs in ms a request must all meet to count as goodput, e.g. ttft:200,tpot:50,e2e:5000",
               "str", None),
    OptionSpec("temperature", "--temperature", "sampling temperatures (comma list)", "list_float", [0.0]),
    OptionSpec("model", "--model", "target model: bundled name, local dir, GGUF file or hub id", "str", None),
    OptionSpec("tokenizer", "--tokenizer", "tokenizer (defaults to the model)", "str", None),
    OptionSpec("draft_model", "--draft-model", "draft model path, or layers:N for an early-exit draft", "str", None),
    OptionSpec("draft_length", "--draft-length",
               "draft tokens per step (gamma); a comma list sweeps them (ids gain -gN)", "list_int", [3]),
    OptionSpec("server_url", "--server-url",
               "attach to running server(s): URL, or drafter=URL,... per drafter", "str", None),
    OptionSpec("dataset", "--dataset", "dataset: 'bundled', a prepared directory, or a file", "str", "bundled"),
    OptionSpec("category", "--category", "qualitative categories to keep (comma list)", "list_str", []),
    OptionSpec("num_prompts", "--num-prompts", "prompts per category (stratified, deterministic)", "int", 4),
    OptionSpec("output_len", "--output-len", "max new tokens per turn", "int", 64),
    OptionSpec("ignore_eos", "--ignore-eos",
               "keep generating past EOS to exactly --output-len tokens (on), or stop at EOS as the engines "
               "and their own benchmark tools do unless told otherwise (off)", "bool", True),
    OptionSpec("warmup", "--warmup", "warmup requests per case, excluded from metrics", "int", 1),
    OptionSpec("rounds", "--speedbench-rounds",
               "rounds per SD case: its AR twin and it measured in turns (AR, SD, AR, SD, ...) over the same "
               "prompts, so drift cancels in the speedup", "int", 2),
    OptionSpec("warmup_prompts", "--warmup-prompts",
               "warmup prompts: outside (prompts not measured, so a cross-request drafter cannot learn a "
               "measured answer) or measured", "str", "outside", ("outside", "measured")),
    OptionSpec("repeat_check", "--speedbench-repeat-check",
               "measure each speculative case's prompts twice (reset in between) and fail when the second "
               "AL leaves the first one's 95% interval", "bool", False),
    OptionSpec("device", "--device", "device for in-process engines (auto, cpu, cuda, cuda:N)", "str", "auto"),
    OptionSpec("engine_args", "--engine-args", "extra arguments passed to the engine launcher", "str", None),
    OptionSpec("request_timeout", "--request-timeout", "seconds without progress before a request fails",
               "float", 300.0),
    OptionSpec("ready_timeout", "--ready-timeout", "seconds to wait for a launched engine to be ready",
               "float", 600.0),
    OptionSpec("chat_template", "--chat-template", "apply the tokenizer's chat template (on/off)", "bool", True),
    OptionSpec("thinking_end", "--thinking-end",
               "text that ends a reasoning section, for the thinking-vs-answer breakdown: auto (by model "
               "family, else </think>), off, or the text itself", "str", "auto"),
    OptionSpec("rank_corpus", "--rank-corpus",
               "corpus of the token frequency ranks behind acceptance by token rarity: bundled (the bundled "
               "prompt texts) or a .txt/.jsonl file", "str", "bundled"),
    OptionSpec("seed", "--speedbench-seed", "seed for prompt sampling and bootstrap", "int", 0),
    OptionSpec("config", "--speedbench-config", "path to speedbench.yaml", "str", None),
    OptionSpec("profile", "--speedbench-profile",
               "profile of speedbench.yaml's profiles: section (default: demo when the run names no "
               "engine, dataset, model or server URL; none: no profile)", "str", None),
    OptionSpec("json", "--speedbench-json", "write results JSON to this path", "str", None),
    OptionSpec("autosave", "--speedbench-autosave",
               "save results under --speedbench-storage as NNNN_<commit>_<time>.json, never overwriting "
               "(on by default; off: no autosave)", "bool", True),
    OptionSpec("storage", "--speedbench-storage", "directory for autosaved results (environment: SPEEDBENCH_STORAGE)",
               "str", ".speedbench", env="SPEEDBENCH_STORAGE"),
    OptionSpec("save", "--speedbench-save",
               "name of this run: autosaved as NNNN_NAME.json (letters, digits, . _ -), and usable wherever a run "
               "number is", "str", None),
    OptionSpec("compare", "--speedbench-compare", "baseline results: PATH, 'latest' or a run number NNNN",
               "str", None),
    OptionSpec("fail", "--speedbench-fail",
               "regression rules, e.g. acceptance_length:-3%,speedup_user_tps:-5%,ttft_s.p99:+10%", "str", None),
    OptionSpec("strict", "--speedbench-strict", "fail on tolerance alone, ignoring the confidence interval",
               "bool", False),
    OptionSpec("allow_missing", "--speedbench-allow-missing",
               "let a gate pass when baseline cases are absent, errored or unmeasured in this run (default: "
               "missing means failed)", "bool", False),
    OptionSpec("allow_change", "--speedbench-allow-change",
               "settings fingerprint fields whose change against the baseline is deliberate (comma list, e.g. "
               "engine_version); cases whose other fields differ are not gated and fail", "list_str", [],
               FINGERPRINT_FIELDS),
    OptionSpec("gpus", "--speedbench-gpus", "GPU ids to spread xdist workers over (comma list)", "str", None),
    OptionSpec("shard", "--speedbench-shard",
               "run shard K of N of the matrix (K/N, from 1; engine start groups never split), or auto: from "
               "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT or JOB_COMPLETION_INDEX/SPEEDBENCH_SHARD_COUNT", "str", None),
    OptionSpec("shard_by", "--speedbench-shard-by",
               "what a shard keeps whole: engine (every case of a launched engine instance, so each starts once "
               "in the fleet), pair (an AR case with its SD cases; each shard starts the servers it needs), or "
               "auto: engine when that fills every shard, else pair", "str", "auto", ("auto", "engine", "pair")),
    OptionSpec("plan", "--speedbench-plan",
               "print each shard's cases and estimated time (for --speedbench-shard's N, else for several N), "
               "then stop without measuring", "bool", False),
)

OPTION_BY_NAME: dict[str, OptionSpec] = {o.name: o for o in OPTIONS}
#: options the `speedbench` commands share with the plugin (as --fail, --strict, --storage there),
#: registered from the same OptionSpec, as pytest-benchmark shares its option groups with its CLI
COMMAND_OPTIONS: tuple[str, ...] = ("fail", "strict", "storage", "allow_missing", "allow_change")


def argparse_help(text: str) -> str:
    """Escape `%` for argparse, which %-formats every help string when it prints help.

    An unescaped `%` (e.g. in "acceptance_length:-3%,...") makes argparse raise ValueError and
    breaks `pytest --help` in every directory where the plugin is installed.
    """
    return text.replace("%", "%%")


def add_option(addoption: Callable[..., Any], spec: OptionSpec, *, command: bool = False) -> None:
    """Register one option with `addoption` (a pytest option group's, or an argparse parser's
    add_argument): for pytest as `spec.flag` with a raw value (None = not given: the settings
    merge decides); for a `speedbench` command as `--<name>` with its typed default."""
    text = argparse_help(spec.help)
    if not command:
        kwargs: dict[str, Any] = {"dest": "speedbench_" + spec.name, "default": None, "help": text}
        if spec.kind == "bool":
            kwargs.update(nargs="?", const="true", metavar="on|off")
        addoption(spec.flag, **kwargs)
        return
    kwargs = {"dest": spec.name, "help": text}
    if spec.kind == "bool":
        kwargs["action"] = "store_true"
    else:
        kwargs.update(default=spec.default_value(), metavar=spec.name.upper())
        if spec.kind in ("int", "float"):
            kwargs["type"] = int if spec.kind == "int" else float
        if spec.default is not None:
            env = f"; environment: {spec.env}" if spec.env else ""
            kwargs["help"] = f"{text} (default: {argparse_help(str(spec.default))}{env})"
    addoption("--" + spec.name.replace("_", "-"), **kwargs)


def add_command_options(parser: Any, names: Sequence[str] = COMMAND_OPTIONS) -> None:
    """The shared options on a `speedbench` subcommand's argparse parser."""
    for name in names:
        add_option(parser.add_argument, OPTION_BY_NAME[name], command=True)


def parse_rate(raw: str) -> float:
    """A request rate: a positive number of requests per second, or inf (all at once)."""
    text = str(raw).strip().lower()
    try:
        rate = math.inf if text in ("inf", "infinity") else float(text)
    except ValueError:
        rate = math.nan
    if not rate > 0 or math.isnan(rate):
        raise UsageError(f"--request-rate: {raw!r} is not a positive rate; give requests per second (e.g. 8, 0.5) "
                         "or inf")
    return rate


#: the latency SLOs --goodput accepts (metrics/goodput.py computes them)
SLO_NAMES: tuple[str, ...] = ("ttft", "tpot", "e2e")


def parse_slos(text: str) -> dict[str, float]:
    """--goodput 'ttft:200,tpot:50' -> {'ttft': 0.2, 'tpot': 0.05} (seconds); a UsageError names a bad item."""
    slos: dict[str, float] = {}
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition(":")
        name = name.strip().lower()
        if name not in SLO_NAMES or not sep:
            raise UsageError(f"--goodput: {item!r} is not NAME:MS; names: {', '.join(SLO_NAMES)} "
                             "(e.g. ttft:200,tpot:50,e2e:5000)")
        try:
            ms = float(value)
        except ValueError:
            ms = -1.0
        if not ms > 0 or math.isinf(ms):
            raise UsageError(f"--goodput: {item!r}: the SLO must be a positive number of milliseconds")
        slos[name] = ms / 1e3
    if not slos:
        raise UsageError("--goodput: no SLO given; e.g. ttft:200,tpot:50,e2e:5000")
    return slos


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
        if spec.kind == "list_rate":
            return [parse_rate(x) for x in items]
    except ValueError:
        raise UsageError(f"{what}: {raw!r} is not a valid {spec.kind.replace('list_', 'list of ')}") from None
    choices = spec.valid_choices()
    if choices is not None:
        for item in items:
            if item not in choices:
                raise bad_value(f"{spec.name.replace('_', ' ')} in {what}", item, choices)
    return items


@dataclass
class Settings:
    """Every option's value (OPTIONS hold the defaults; `default_settings()` applies them) plus
    what speedbench.yaml adds around the options."""

    engine: list[str]
    drafter: list[str]
    split: list[str]
    bucket: list[str]
    batch_size: list[int]
    request_rate: list[float]
    burstiness: float
    goodput: str | None
    temperature: list[float]
    model: str | None
    tokenizer: str | None
    draft_model: str | None
    draft_length: list[int]
    server_url: str | None
    dataset: str
    category: list[str]
    num_prompts: int
    output_len: int
    ignore_eos: bool
    warmup: int
    rounds: int
    warmup_prompts: str
    repeat_check: bool
    device: str
    engine_args: str | None
    request_timeout: float
    ready_timeout: float
    chat_template: bool
    thinking_end: str
    rank_corpus: str
    seed: int
    config: str | None
    #: the profile applied (None: no profile); see settings/profile.py
    profile: str | None
    json: str | None
    autosave: bool
    storage: str
    save: str | None
    compare: str | None
    fail: str | None
    strict: bool
    allow_missing: bool
    allow_change: list[str]
    gpus: str | None
    shard: str | None
    shard_by: str
    plan: bool
    #: per-engine overrides from speedbench.yaml's `engines:` section (batch_size, engine_args, ...)
    per_engine: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: sections of speedbench.yaml other modules read (gates, thresholds, ...)
    sections: dict[str, Any] = field(default_factory=dict)
    #: names the user set: on the command line or at speedbench.yaml's top level (not a
    #: profile's, not defaults); a named engine that cannot run is a usage error
    explicit: frozenset[str] = frozenset()
    #: names a profile set (the demo's limits, for example)
    from_profile: frozenset[str] = frozenset()
    #: the speedbench.yaml read, if any
    yaml_file: str | None = None

    def validate(self) -> None:
        for bs in self.batch_size:
            if bs < 1:
                raise UsageError(f"--batch-size: {bs} is not a positive integer; batch sizes start at 1")
        for t in self.temperature:
            if not (0.0 <= t <= 2.0) or math.isnan(t):
                raise UsageError(f"--temperature: {t:g} is out of range; valid temperatures are 0 to 2")
        for name in ("num_prompts", "output_len", "rounds"):
            if getattr(self, name) < 1:
                raise UsageError(f"{OPTION_BY_NAME[name].flag}: {getattr(self, name)} must be at least 1")
        for gamma in self.draft_length:
            if gamma < 1:
                raise UsageError(f"--draft-length: {gamma} must be at least 1 (draft lengths are 1 or more)")
        if self.save is not None and not re.fullmatch(r"[A-Za-z0-9._-]+", self.save):
            raise UsageError(f"--speedbench-save: {self.save!r} is not a valid run name; valid names use letters, "
                             "digits, '.', '_' and '-'")
        if self.warmup < 0:
            raise UsageError(f"--warmup: {self.warmup} must be 0 or more")
        if not self.burstiness > 0 or math.isinf(self.burstiness):
            raise UsageError(f"--burstiness: {self.burstiness:g} must be a positive number (1 = Poisson arrivals)")
        if self.goodput:
            parse_slos(self.goodput)
        if self.warmup_prompts not in ("outside", "measured"):
            raise bad_value("--warmup-prompts", self.warmup_prompts, ("outside", "measured"))
        for name in ("request_timeout", "ready_timeout"):
            if getattr(self, name) <= 0:
                raise UsageError(f"{OPTION_BY_NAME[name].flag}: must be positive")
        names = engine_names() if self.per_engine else ()
        for engine, overrides in self.per_engine.items():
            if engine not in names:
                raise bad_value("engine in speedbench.yaml 'engines:' section", engine, names)
            get_spec(engine).check_options(overrides, f"speedbench.yaml engines.{engine}")
            for bs in overrides.get("batch_size", []):
                if bs < 1:
                    raise UsageError(f"engines.{engine}.batch_size: {bs} is not a positive integer")

        for key, url in self.server_urls().items():
            check_url(url, key)

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


def check_url(url: str, drafter: str = "*") -> None:
    """A --server-url value must be http(s)://HOST[:PORT]: without a scheme, every request of
    every case would fail with a traceback instead of one message up front."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    where = "--server-url" + (f" ({drafter}=...)" if drafter != "*" else "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        hint = f"; did you mean http://{url}?" if "://" not in url else ""
        raise UsageError(f"{where}: {url!r} is not an http(s) URL; valid forms: http://HOST:PORT, "
                         f"https://HOST:PORT, or DRAFTER=URL,... per drafter{hint}")
    try:
        parts.port
    except ValueError:
        raise UsageError(f"{where}: {url!r} has a bad port; valid forms: http://HOST:PORT, https://HOST:PORT") from None


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


def _defaults() -> dict[str, Any]:
    """Each option's default (a copy: list defaults must not be shared between sessions)."""
    return {spec.name: spec.default_value() for spec in OPTIONS}


def default_settings() -> Settings:
    """Settings with every option at its default, as with no command line and no speedbench.yaml."""
    return Settings(**_defaults())


SECTION_KEYS = ("gates", "thresholds", "fail", "report")
#: Settings attributes that are not options
_NOT_OPTIONS = {"per_engine", "sections", "explicit", "from_profile", "yaml_file"}


def _check_keys(values: Mapping[str, Any], where: object) -> None:
    valid_keys = {f.name for f in fields(Settings)} - _NOT_OPTIONS
    for key in values:
        if key.replace("-", "_") not in valid_keys:
            raise bad_value(f"setting in {where}", key, sorted(valid_keys | {"engines", "profiles", *SECTION_KEYS}))


def _get(values: Mapping[str, Any], name: str) -> Any:
    return values.get(name, values.get(name.replace("_", "-")))


def _per_engine(raw: Any, where: object) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, Mapping):
        raise UsageError(f"{where}: 'engines' must map engine names to settings")
    per_engine: dict[str, dict[str, Any]] = {}
    for engine, overrides in raw.items():
        parsed: dict[str, Any] = {}
        for key, value in dict(overrides or {}).items():
            spec = OPTION_BY_NAME.get(key.replace("-", "_"))
            if spec is not None and spec.kind == "str" and isinstance(value, (list, tuple)):
                # engine_args as a YAML list (the README's form): kept as a list, not str(list)
                parsed[key.replace("-", "_")] = [str(v) for v in value]
                continue
            parsed[key.replace("-", "_")] = coerce(spec, value) if spec else value
        per_engine[str(engine)] = parsed
    return per_engine


def build_settings(
    cli: Mapping[str, Any],
    ini: Mapping[str, Any] | None = None,
    yaml_path: Path | None = None,
) -> Settings:
    """Merge the sources and validate. `cli`/`ini` hold raw values or None.

    Precedence: command line, the profile (settings/profile.py), speedbench.yaml's top level,
    ini, defaults. Per-engine sections: the profile's over the top level's, except keys the
    command line sets for every engine.
    """
    from pytest_speedbench.settings.profile import choose_profile, profile_values

    ini = ini or {}
    file_values: dict[str, Any] = load_yaml(yaml_path) if yaml_path else {}
    per_engine_raw = file_values.pop("engines", {}) or {}
    profiles = file_values.pop("profiles", {}) or {}
    if not isinstance(profiles, Mapping):
        raise UsageError(f"{yaml_path}: 'profiles' must map profile names to settings")
    sections = {k: file_values.pop(k) for k in SECTION_KEYS if k in file_values}
    _check_keys(file_values, yaml_path)
    named = {spec.name: next((v for v in (cli.get(spec.name), _get(file_values, spec.name), ini.get(spec.name))
                              if v is not None), None) for spec in OPTIONS}
    profile = choose_profile(named.get("profile"), profiles, named)
    profile_file = profile_values(profiles, profile, yaml_path)
    profile_engines = profile_file.pop("engines", {}) or {}
    _check_keys(profile_file, f"{yaml_path} profile {profile!r}")
    values: dict[str, Any] = _defaults()
    explicit: set[str] = set()
    from_profile: set[str] = set()
    for spec in OPTIONS:
        if spec.name == "profile":
            continue
        for source, raw in (("cli", cli.get(spec.name)), ("profile", _get(profile_file, spec.name)),
                            ("yaml", _get(file_values, spec.name)), ("ini", ini.get(spec.name))):
            if raw is not None and raw != "":
                values[spec.name] = coerce(spec, raw)
                if source in ("cli", "yaml"):
                    explicit.add(spec.name)
                elif source == "profile":
                    from_profile.add(spec.name)
                break
    per_engine = _per_engine(per_engine_raw, yaml_path)
    for engine, overrides in _per_engine(profile_engines, f"{yaml_path} profile {profile!r}").items():
        kept = {k: v for k, v in overrides.items() if cli.get(k) in (None, "")}
        per_engine[engine] = {**per_engine.get(engine, {}), **kept}
    values["profile"] = profile
    settings = Settings(**values, per_engine=per_engine, sections=sections,
                        explicit=frozenset(explicit), from_profile=frozenset(from_profile),
                        yaml_file=str(yaml_path) if yaml_path else None)
    settings.validate()
    return settings
