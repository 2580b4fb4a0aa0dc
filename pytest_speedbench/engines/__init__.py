"""Engine registry: names, supported drafters and lazy import paths.

Matrix validation needs to know which drafters each engine supports without importing the
engine (and its heavy dependencies), so that knowledge lives here, beside the import path.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from pytest_speedbench.errors import bad_value
from pytest_speedbench.engines.base import Engine, EngineConfig

DRAFTERS: tuple[str, ...] = ("none", "ngram", "draft", "eagle", "eagle3", "mtp")


@dataclass(frozen=True)
class EngineEntry:
    name: str
    target: str  # "module:Class"
    drafters: tuple[str, ...]
    max_concurrency: int | None = None


ENGINES: dict[str, EngineEntry] = {
    e.name: e
    for e in (
        EngineEntry("sglang", "pytest_speedbench.engines.sglang:SGLangEngine", DRAFTERS),
        EngineEntry("vllm", "pytest_speedbench.engines.vllm:VLLMEngine", DRAFTERS),
        EngineEntry("trtllm", "pytest_speedbench.engines.trtllm:TRTLLMEngine", DRAFTERS),
        EngineEntry("llamacpp", "pytest_speedbench.engines.llamacpp:LlamaCppEngine", ("none", "ngram", "draft")),
        EngineEntry("hf", "pytest_speedbench.engines.hf:HFEngine", ("none", "ngram", "draft"), max_concurrency=1),
    )
}


def get_entry(name: str) -> EngineEntry:
    try:
        return ENGINES[name]
    except KeyError:
        raise bad_value("engine", name, ENGINES) from None


def engine_class(name: str) -> type[Engine]:
    module_name, _, attr = get_entry(name).target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def create_engine(config: EngineConfig, workdir: Path) -> Engine:
    return engine_class(config.engine)(config, workdir)
