"""Engine registry: the SPEC of every built-in engine module plus the `pytest_speedbench.engines`
entry points of installed distributions (see engines/spec.py).

Built when asked, never at import: engine modules import their heavy dependencies (torch,
vllm, sglang, tensorrt_llm) only inside functions, so reading their SPECs is cheap, and an
entry point installed after this module was imported is still seen. Python caches the
modules; callers that look up many engines take one `registry()` and keep it.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from pytest_speedbench.engines.base import Engine, EngineConfig
from pytest_speedbench.engines.spec import EngineSpec, parallel_settings
from pytest_speedbench.errors import UsageError, bad_value

DRAFTERS: tuple[str, ...] = ("none", "ngram", "draft", "eagle", "eagle3", "mtp")
#: modules of pytest_speedbench.engines that end in `SPEC = EngineSpec(...)`
BUILTIN: tuple[str, ...] = ("sglang", "vllm", "trtllm", "llamacpp", "hf")
ENTRY_POINT_GROUP = "pytest_speedbench.engines"
#: lowercase words of letters and digits joined by single '-' or '_': safe in a comma-separated
#: --engine list, a speedbench.yaml key, a test id and a folder name
ENGINE_NAME = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")


def check_engine_name(name: object, where: str) -> None:
    """UsageError naming the bad engine name, where it came from and the rule."""
    if not isinstance(name, str) or not ENGINE_NAME.fullmatch(name):
        raise UsageError(f"engine name {name!r} ({where}) is not valid: use lowercase letters and digits, "
                         "words joined by single '-' or '_', starting with a letter (e.g. my-engine)")


def _entry_point_specs() -> list[tuple[EngineSpec, str]]:
    """(spec, where it came from) per entry point, which names an EngineSpec or a module
    holding one as SPEC."""
    specs = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        loaded = ep.load()
        spec = getattr(loaded, "SPEC", loaded)
        if not isinstance(spec, EngineSpec):
            raise UsageError(f"entry point {ep.name!r} ({ep.value}) in group {ENTRY_POINT_GROUP} gives "
                             f"{type(spec).__name__}, not an EngineSpec (or a module with SPEC = EngineSpec(...))")
        specs.append((spec, f"entry point {ep.name!r} = {ep.value} in group {ENTRY_POINT_GROUP}"))
    return specs


def registry() -> dict[str, EngineSpec]:
    """Every engine by name: built-ins first, then entry points (which may not reuse a name)."""
    specs: dict[str, EngineSpec] = {}
    for module in BUILTIN:
        spec = importlib.import_module(f"pytest_speedbench.engines.{module}").SPEC
        check_engine_name(spec.name, f"pytest_speedbench.engines.{module}.SPEC")
        specs[spec.name] = spec
    for spec, where in _entry_point_specs():
        check_engine_name(spec.name, where)
        if spec.name in specs:
            raise UsageError(f"engine {spec.name!r} from entry point group {ENTRY_POINT_GROUP} is already "
                             "registered; give it another name")
        unknown = [d for d in spec.drafters if d not in DRAFTERS]
        if unknown:
            raise bad_value(f"drafter of engine {spec.name}", unknown[0], DRAFTERS)
        specs[spec.name] = spec
    return specs


def engine_names() -> tuple[str, ...]:
    return tuple(registry())


def get_spec(name: str) -> EngineSpec:
    specs = registry()
    try:
        return specs[name]
    except KeyError:
        raise bad_value("engine", name, specs) from None


def parallel_args(engine: str, per_engine: Mapping[str, Any]) -> tuple[str, ...]:
    """The engine's own command-line flags for the parallel settings of its `engines: <name>:`
    section (its EngineSpec's parallel_flags); UsageError for a setting it cannot launch with."""
    return get_spec(engine).parallel_argv(parallel_settings(per_engine))


def engine_class(name: str) -> type[Engine]:
    return get_spec(name).engine_class


def create_engine(config: EngineConfig, workdir: Path) -> Engine:
    return engine_class(config.engine)(config, workdir)
