"""One-time preparation of engines the user did not name (the demo's), as each first starts.

Why: the main job must work on a fresh machine. The demo holds llama.cpp, whose server is built
from source once (minutes), and the hf engine, whose bundled GGUF model is converted once (tens
of seconds). Done silently inside an engine's start it would look like a hung test and, on
failure, error every test of the engine; done here it shows progress, caches the result
(~/.cache/speedbench) and turns a failure into one skip reason per case.

Engines the user named are never prepared here: they must be ready, and a missing one is a
usage error naming the command that installs it (session.py).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

Say = Callable[[str], None]


@dataclass(frozen=True)
class Preparation:
    """A step that makes an engine ready: `what` is shown before it runs, `run` does it."""

    engine: str
    what: str
    run: Callable[[Say, bool], None]  # (say, detailed progress)
    #: True when the step is what makes the engine usable at all (a build): done only for
    #: engines the user did not name; False for a cache fill the engine would do anyway
    installs: bool = False


class BuildProgress:
    """A file-like sink for cmake's output that says one line per 10% step (with the elapsed
    time) instead of hundreds of compiler lines; the full output stays in the build log."""

    _PERCENT = re.compile(r"^\[\s*(\d+)%\]")

    def __init__(self, say: Say, step: int = 10) -> None:
        self.say, self.step, self.next = say, step, step
        self.started = time.monotonic()

    def write(self, line: str) -> int:
        match = self._PERCENT.match(line)
        if match and int(match.group(1)) >= self.next:
            percent = int(match.group(1))
            self.say(f"  {percent:3d}% after {time.monotonic() - self.started:.0f} s")
            self.next = (percent // self.step + 1) * self.step
        return len(line)

    def flush(self) -> None:
        pass


def llama_server_build(engine: str, model: str | None = None) -> Preparation | None:
    """Building the pinned llama-server, when it is not built and a toolchain is there."""
    from pytest_speedbench.engines import llama_build
    from pytest_speedbench.errors import EngineNotInstalled

    if os.environ.get(llama_build.ENV_BINARY):
        return None  # the user picked a binary: building another would not make it usable
    try:
        llama_build.find_llama_server()
        return None
    except EngineNotInstalled:
        pass
    try:
        llama_build.check_toolchain()
    except EngineNotInstalled:
        return None  # cannot be made ready here: the engine is skipped with its install hint

    def run(say: Say, detailed: bool) -> None:
        echo: TextIO | None = BuildProgress(say) if detailed else None  # type: ignore[assignment]
        llama_build.build(say=lambda msg: say(f"  {msg}"), echo=echo)

    return Preparation(engine, f"building llama-server b{llama_build.BUILD_NUMBER} into "
                               f"{llama_build.cache_root()} (once; ~4-8 min on 2 cores)", run, installs=True)


def model_conversion(engine: str, model: str | None) -> Preparation | None:
    """Converting a GGUF model (the bundled one included) for transformers, when not cached."""
    from pytest_speedbench.models import resolve_model
    from pytest_speedbench.errors import UsageError

    try:
        ref = resolve_model(model)
    except UsageError:
        return None  # the engine's own start reports it
    if ref.converted or ref.gguf is None:
        return None

    def run(say: Say, detailed: bool) -> None:
        ref.hf_dir  # noqa: B018 - converts into the cache

    return Preparation(engine, f"converting {ref.name} ({ref.gguf.name}) to a cached transformers folder "
                               f"(once; ~30-60 s)", run)


def preparations_for(engine: str, model: str | None) -> list[Preparation]:
    """What `engine` still needs on this machine before it can run the given model (its
    EngineSpec's `preparation`, e.g. llama.cpp's build or hf's model conversion)."""
    from pytest_speedbench.engines import get_spec

    prepare = get_spec(engine).preparation
    step = prepare(engine, model) if prepare is not None else None
    return [step] if step is not None else []


def run_preparations(steps: list[Preparation], say: Say, detailed: bool) -> dict[str, str]:
    """Run every step; returns {engine: reason} for the steps that failed (those engines skip)."""
    failed: dict[str, str] = {}
    for step in steps:
        if step.engine in failed:
            continue
        say(f"speedbench: {step.engine}: {step.what}")
        started = time.monotonic()
        try:
            step.run(say, detailed)
        except Exception as exc:  # a failed preparation skips one engine; it must not stop the run
            failed[step.engine] = f"{step.what.split(' (')[0]} failed: {type(exc).__name__}: {exc}"
            say(f"speedbench: {step.engine}: {failed[step.engine]}")
            continue
        say(f"speedbench: {step.engine}: ready after {time.monotonic() - started:.0f} s")
    return failed
