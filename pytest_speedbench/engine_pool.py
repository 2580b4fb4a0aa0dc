"""The session's engines: one configuration per engine key, started once, stopped when done.

An `EngineKey` (engine, drafter, draft length) is one engine start: its cases share the running
engine. The pool decides whether an engine can run here (installed, or preparable: a build or a
model conversion), turns the settings into its `EngineConfig`, and keeps an AR twin running past
its own cases while an SD case still measures against it in interleaved rounds.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_speedbench.engines import create_engine, get_spec, parallel_args
from pytest_speedbench.engines.base import Engine, EngineConfig
from pytest_speedbench.engines.prepare import preparations_for, run_preparations
from pytest_speedbench.engines.spec import engine_extra
from pytest_speedbench.errors import EngineNotInstalled
from pytest_speedbench.settings.matrix import Case, EngineKey, Matrix
from pytest_speedbench.settings.options import Settings


class EnginePool:
    def __init__(self, settings: Settings, matrix: Matrix, workdir: Path) -> None:
        self.settings = settings
        self.matrix = matrix
        self.workdir = workdir
        #: launch facts and server info of every engine started, by str(key) (saved with the results)
        self.info: dict[str, dict[str, Any]] = {}
        #: running engines by key; an AR twin's stays up past its own cases while SD cases need it
        self.running: dict[EngineKey, Engine] = {}
        #: key -> whether a case still to run needs that engine (the case runner's interleaving)
        self.still_needed: Callable[[EngineKey], bool] = lambda key: False
        self._availability: dict[str, str | None] = {}
        #: engines the session may prepare (build, convert) before the first test: not named by the user
        self.preparable: set[str] = set()
        self._prepared: set[str] = set()

    def config(self, key: EngineKey) -> EngineConfig:
        engine, drafter, s = key.engine, key.drafter, self.settings
        urls = s.server_urls()
        per_engine = s.per_engine.get(engine, {})
        extra_args = per_engine.get("engine_args") or []
        if isinstance(extra_args, str):
            extra_args = shlex.split(extra_args)
        args = tuple(str(a) for a in extra_args) + tuple(shlex.split(s.engine_args or ""))
        args = (parallel_args(engine, per_engine) if not urls else ()) + args  # tp/pp/multi-node flags
        sizes = [c.batch_size for c in self.matrix.cases if c.engine_key == key]
        return EngineConfig(
            engine=engine,
            drafter=drafter,
            model=per_engine.get("model", s.model),
            draft_model=per_engine.get("draft_model", s.draft_model),
            draft_length=key.draft_length or int(per_engine.get("draft_length", s.draft_length[0])),
            max_batch_size=max(sizes, default=1),
            server_url=urls.get(drafter, urls.get("*")),
            engine_args=args,
            device=s.device,
            ready_timeout_s=s.ready_timeout,
            request_timeout_s=s.request_timeout,
            extra=engine_extra(get_spec(engine), per_engine),
        )

    def availability(self, engine: str) -> str | None:
        """None when the engine can run (maybe after preparing it), else the reason it cannot.

        An engine the user named must be ready: it raises (a usage error before anything
        starts). One from a profile or the defaults is prepared when it can be, else skipped.
        """
        if engine not in self._availability:
            reason = None
            configured = self.settings.per_engine.get(engine, {}).get("command")
            if not self.settings.server_urls() and not configured:
                try:
                    get_spec(engine).check_installed()
                except EngineNotInstalled as exc:
                    if "engine" in self.settings.explicit:
                        raise
                    if preparations_for(engine, self.config(EngineKey(engine, "none")).model):
                        self.preparable.add(engine)
                    else:
                        reason = str(exc)
            self._availability[engine] = reason
        return self._availability[engine]

    def prepare(self, engines: list[str], say: Callable[[str], None], detailed: bool) -> None:
        """Build or convert, once and cached, what the engines about to start still need; an
        engine whose preparation fails is skipped with the reason (never one error per test).

        Called as each engine first starts, not before the first test: the demo's first result
        (hf) then comes before llama.cpp's build, not after it."""
        steps = []
        for engine in dict.fromkeys(engines):
            if self.settings.server_urls() or engine in self._prepared or self._availability.get(engine):
                continue
            self._prepared.add(engine)
            found = preparations_for(engine, self.config(EngineKey(engine, "none")).model)
            if engine not in self.preparable:  # named or ready: only the cheap, transparent steps
                found = [step for step in found if not step.installs]
            steps += found
        for engine, reason in run_preparations(steps, say, detailed).items():
            self._availability[engine] = reason

    def skip_reason(self, case: Case) -> str | None:
        reason = self.availability(case.engine)
        if reason:
            return f"{case.engine} is not available: {reason}"
        limit = get_spec(case.engine).max_concurrency
        if limit is not None and case.batch_size > limit and not self.settings.server_urls():
            return (
                f"{case.engine} serves {limit} request at a time; batch size {case.batch_size} would "
                "report misleading throughput"
            )
        return None

    def start(self, key: EngineKey) -> Engine:
        config = self.config(key)
        reason = self._availability.get(config.engine)
        if reason:  # its preparation failed after collection
            raise EngineNotInstalled(reason)
        engine = create_engine(config, self.workdir / str(key))
        (self.workdir / str(key)).mkdir(parents=True, exist_ok=True)
        engine.start()
        self.info[str(key)] = engine.info()
        return engine

    def acquire(self, key: EngineKey) -> Engine:
        """The running engine for `key`, started on first use (by its fixture or by an SD case
        that measures its AR twin in rounds)."""
        if key not in self.running:
            self.running[key] = self.start(key)
        return self.running[key]

    def release(self, key: EngineKey) -> None:
        """Stop the engine when its fixture is done, unless a case still to run needs it (an SD
        case interleaving with it as its AR twin: then `stop_all` stops it at the session's end)."""
        if self.still_needed(key):
            return
        engine = self.running.pop(key, None)
        if engine is not None:
            engine.stop()

    def stop_all(self) -> None:
        while self.running:
            _, engine = self.running.popitem()
            engine.stop()
