"""EngineSpec: everything the suite knows about one engine, declared once in its module.

Each engine module ends in `SPEC = EngineSpec(...)`; the registry (engines/__init__.py) is built
from those SPECs plus the `pytest_speedbench.engines` entry-point group, so an engine defined in
another distribution is one SPEC and one entry point. The matrix, the settings, the
parallel flags and the availability check all read the SPEC; nothing else lists engine facts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import util
from typing import TYPE_CHECKING, Any

from pytest_speedbench.errors import EngineNotInstalled, UsageError

if TYPE_CHECKING:
    from pytest_speedbench.engines.base import Engine
    from pytest_speedbench.engines.prepare import Preparation

#: keys of `engines: <name>:` every engine accepts: settings the suite itself consumes
#: (model, drafter length, batch sizes, extra launcher args) and the launcher override
COMMON_OPTIONS: Mapping[str, str] = {
    "model": "target model for this engine (overrides --model)",
    "draft_model": "draft model for this engine (overrides --draft-model)",
    "draft_length": "draft tokens per step for this engine (overrides --draft-length)",
    "batch_size": "batch sizes for this engine (overrides --batch-size)",
    "engine_args": "extra launcher arguments (a string or a list), before --engine-args",
    "command": "launcher command instead of the default one (also: the engine's command env var)",
    "env": "extra environment variables for the launched server (a mapping)",
}
#: parallel settings (`parallel_settings`, `EngineSpec.parallel_argv`; xdist.py places them on
#: GPUs); the short spellings are aliases
PARALLEL_KEYS: tuple[str, ...] = (
    "tensor_parallel", "pipeline_parallel", "data_parallel", "nnodes", "node_rank", "dist_init_addr",
)
PARALLEL_ALIASES: Mapping[str, str] = {
    "tp": "tensor_parallel", "tp_size": "tensor_parallel", "tensor_parallel_size": "tensor_parallel",
    "pp": "pipeline_parallel", "pp_size": "pipeline_parallel", "pipeline_parallel_size": "pipeline_parallel",
    "dp": "data_parallel", "dp_size": "data_parallel", "data_parallel_size": "data_parallel",
}



def parallel_settings(per_engine: Mapping[str, Any]) -> dict[str, Any]:
    """The parallel keys of one engine's speedbench.yaml section, aliases resolved."""
    out: dict[str, Any] = {}
    for key, value in per_engine.items():
        name = PARALLEL_ALIASES.get(key, key)
        if name in PARALLEL_KEYS and value is not None:
            out[name] = value if name == "dist_init_addr" else int(value)
    return out


def gpus_needed(parallel: Mapping[str, Any]) -> int:
    """GPUs one node of the engine uses: tensor x pipeline x data parallel sizes."""
    n = 1
    for key in ("tensor_parallel", "pipeline_parallel", "data_parallel"):
        n *= int(parallel.get(key, 1))
    return n


@dataclass(frozen=True)
class EngineSpec:
    """One engine's facts.

    `parallel_flags` maps a parallel setting to the engine's own flag (None: accepted without a
    flag, the engine uses every visible GPU; absent: the engine cannot do it). `multinode_argv`
    is added once when nnodes/node_rank are set but have no flag (vLLM: a Ray backend).
    `options` are the engine-specific keys of `engines: <name>:` with their help; they reach
    the engine as `EngineConfig.extra`. `check_installed()` raises EngineNotInstalled (with
    `install_hint`) when the engine cannot be launched here.
    """

    name: str
    engine_class: type[Engine]
    drafters: tuple[str, ...]
    max_concurrency: int | None = None
    #: environment variable naming another launcher (fakes, wrappers), e.g. SPEEDBENCH_VLLM_CMD
    command_env: str | None = None
    #: the default launcher's argv, None when it is not installed
    default_command: Callable[[], list[str] | None] | None = None
    install_hint: str = ""
    parallel_flags: Mapping[str, str | None] = field(default_factory=dict)
    multinode_argv: tuple[str, ...] = ()
    options: Mapping[str, str] = field(default_factory=dict)
    #: how to tell the engine is installed; None: a launcher (or `python_package`) is found
    installed_check: Callable[[], None] | None = None
    #: an importable package that also counts as installed (its launcher may be off PATH)
    python_package: str | None = None
    #: (engine, model) -> a one-time step that makes the engine ready here (a build, a model
    #: conversion; engines/prepare.py), or None when there is nothing to do
    preparation: Callable[[str, str | None], Preparation | None] | None = None

    def accepted_options(self) -> list[str]:
        """Every key `engines: <name>:` may hold, sorted."""
        return sorted({*COMMON_OPTIONS, *PARALLEL_KEYS, *PARALLEL_ALIASES, *self.options})

    def check_options(self, options: Mapping[str, Any], where: str) -> None:
        """UsageError naming the first unknown key and the valid ones."""
        valid = self.accepted_options()
        for key in options:
            if key not in valid:
                raise UsageError(f"{where}: unknown option {key!r} for engine {self.name}; "
                                 f"valid options: {', '.join(valid)}")

    def not_installed(self) -> EngineNotInstalled:
        return EngineNotInstalled(f"{self.name} is not installed: {self.install_hint}")

    def launcher(self, configured: object = None) -> list[str] | None:
        """The launcher argv: `engines.<name>.command`, else $<command_env>, else the default
        launcher; None when there is none."""
        if self.command_env is not None:
            from pytest_speedbench.engines.lifecycle import override_command

            if cmd := override_command(self.command_env, configured):
                return cmd
        return self.default_command() if self.default_command is not None else None

    def require_launcher(self, configured: object = None) -> list[str]:
        """`launcher(configured)`, or EngineNotInstalled with the install hint."""
        cmd = self.launcher(configured)
        if cmd is None:
            raise self.not_installed()
        return cmd

    def check_installed(self) -> None:
        """Raise EngineNotInstalled when the engine cannot run here (the declared check, else
        the launcher or python_package lookup; engines with neither are always available)."""
        if self.installed_check is not None:
            self.installed_check()
        elif self.command_env is not None or self.default_command is not None:
            if self.launcher() is None and not (self.python_package and util.find_spec(self.python_package)):
                raise self.not_installed()

    def parallel_argv(self, parallel: Mapping[str, Any]) -> tuple[str, ...]:
        """The engine's own flags for resolved parallel settings; UsageError for one it cannot do."""
        argv: list[str] = []
        for key, value in parallel.items():
            if key in ("tensor_parallel", "pipeline_parallel", "data_parallel", "nnodes") and int(value) == 1:
                continue
            if key not in self.parallel_flags:
                if self.multinode_argv and key in ("nnodes", "node_rank"):
                    if self.multinode_argv[0] not in argv:
                        argv += self.multinode_argv
                    continue
                supported = ", ".join(self.parallel_flags) or "none"
                raise UsageError(
                    f"engines.{self.name}.{key}: {self.name} cannot be launched with {key}={value} here "
                    f"(supported: {supported}); launch it yourself and attach with --server-url"
                )
            flag = self.parallel_flags[key]
            if flag is not None:
                argv += [flag, str(value)]
        return tuple(argv)


def engine_extra(spec: EngineSpec, options: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The `engines: <name>:` keys that reach the engine as EngineConfig.extra: its own options
    plus the launcher override and environment, in the order given."""
    wanted: Sequence[str] = (*spec.options, "command", "env")
    return tuple((k, v) for k, v in options.items() if k in wanted)
