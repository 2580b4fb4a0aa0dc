"""The engine contract: what every engine module provides, and nothing about metrics.

An engine either speaks HTTP (the client streams to it through the lean transport and hands
each raw event to the engine's parser *after* stamping its receipt time) or runs in-process
(it calls back once per verification step and the client stamps the time there).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import orjson

from pytest_speedbench.errors import RequestError, UsageError
from pytest_speedbench.engines.counters import Counters


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float
    max_new_tokens: int
    ignore_eos: bool = True
    seed: int | None = None


@dataclass(frozen=True)
class EngineConfig:
    """Everything that identifies one engine instance; cases sharing it share one server."""

    engine: str
    drafter: str
    model: str | None = None
    draft_model: str | None = None
    draft_length: int = 3
    max_batch_size: int = 1
    server_url: str | None = None
    engine_args: tuple[str, ...] = ()
    device: str = "auto"
    ready_timeout_s: float = 600.0
    request_timeout_s: float = 300.0
    extra: tuple[tuple[str, Any], ...] = ()

    @property
    def key(self) -> str:
        """Readable id of the instance, used in fixture ids and log file names."""
        return f"{self.engine}-{self.drafter}"

    def option(self, name: str, default: Any = None) -> Any:
        return dict(self.extra).get(name, default)


@dataclass(slots=True)
class HttpRequest:
    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})


@dataclass(slots=True)
class ParsedEvent:
    """One streamed event turned into what the client needs."""

    new_token_ids: list[int]
    finished: bool = False
    counters: Counters | None = None


def native_drafter(config: EngineConfig, names: Mapping[str, str], engine: str) -> str:
    """The engine's own name for `config.drafter` (docs/architecture.md's drafter table), or a UsageError
    naming the drafters the engine has."""
    try:
        return names[config.drafter]
    except KeyError:
        raise UsageError(
            f"{engine} has no drafter {config.drafter!r}; valid drafters: none, {', '.join(names)}"
        ) from None


def require_draft_model(config: EngineConfig, engine: str, what: str) -> str:
    """`config.draft_model`, or a UsageError saying which checkpoint the drafter needs."""
    if not config.draft_model:
        raise UsageError(f"{engine} drafter {config.drafter!r} needs --draft-model ({what})")
    return config.draft_model


def decode_event(data: bytes, engine: str) -> dict[str, Any] | None:
    """One SSE payload as a JSON object; None for `[DONE]`; RequestError naming the engine
    and quoting the payload for anything else."""
    if data == b"[DONE]":
        return None
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"malformed {engine} event JSON ({exc}): {data[:120]!r}") from None
    if not isinstance(event, dict):
        raise RequestError(f"unexpected {engine} event (not an object): {data[:120]!r}")
    return event


def raise_openai_error(event: dict[str, Any], engine: str) -> None:
    """OpenAI-compatible servers (vLLM, TensorRT-LLM) report errors as an `error` object."""
    if "error" in event or event.get("object") == "error":
        err = event.get("error", event)
        message = err.get("message", err) if isinstance(err, dict) else err
        raise RequestError(f"{engine} reported an error: {message}")


class OpenAICompletionStream:
    """What /v1/completions streams share (vLLM, TensorRT-LLM): errors, usage, token ids.

    Subclasses turn `(choice, ids)` into a ParsedEvent; `choice` is {} for a usage-only chunk.
    """

    __slots__ = ("usage", "metrics")
    engine: ClassVar[str] = "OpenAI-compatible server"
    #: why a chunk could carry text but no token ids, for the error message
    missing_ids_hint: ClassVar[str] = ""

    def __init__(self) -> None:
        self.usage: dict[str, Any] | None = None
        self.metrics: dict[str, Any] | None = None  # the usage chunk's `metrics` (vLLM per-request)

    def choice_and_ids(self, data: bytes) -> tuple[dict[str, Any], list[int]] | None:
        event = decode_event(data, self.engine)
        if event is None:
            return None
        raise_openai_error(event, self.engine)
        if event.get("usage"):
            self.usage = event["usage"]
            if isinstance(event.get("metrics"), dict):
                self.metrics = event["metrics"]
        choices = event.get("choices") or []
        if not choices:
            return ({}, []) if self.usage is not None else None
        choice = choices[0]
        ids = choice.get("token_ids")
        if ids is None:
            if choice.get("text"):
                raise RequestError(f"{self.engine} sent text without token_ids: {self.missing_ids_hint}")
            ids = []
        return choice, list(ids)


@dataclass
class StateReset:
    """What was done before a case so that no earlier request can change its acceptance.

    Why: some drafters learn across requests (SGLang's NGRAM corpus keeps every earlier
    request's tokens; measured on SGLang 0.5.23: the same 8 prompts at batch size 1, then at
    batch size 4 without a reset, AL 1.18 -> 3.91 with identical outputs). Prefix caches also
    survive. Each case therefore starts from a reset engine, and the results say how.

    method: "flush_cache" (an engine call), "restart" (a launched engine was restarted),
    "fresh start" (a just-launched engine that served no case yet), "not needed" (the engine
    keeps no state that changes acceptance), "none" (state may survive: `warning` says why).
    """

    method: str
    cleared: tuple[str, ...] = ()
    ok: bool = True
    warning: str | None = None
    detail: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "cleared": list(self.cleared), "ok": self.ok, "warning": self.warning,
                "detail": self.detail, "seconds": round(self.seconds, 3)}


class StreamParser(Protocol):
    """Per-request parser state (cumulative vs incremental ids, final counters)."""

    def parse(self, data: bytes) -> ParsedEvent | None:
        """Parse one SSE `data:` payload; None for events that carry nothing (keep-alives)."""
        ...


class Engine(abc.ABC):
    """Base of every engine module."""

    #: the engine's registry name; its other facts (drafters, limits, options) are its EngineSpec
    name: ClassVar[str]
    #: drafters whose state survives across requests (a corpus of earlier outputs, a suffix
    #: tree): without a reset an earlier case's answers inflate a later case's acceptance
    cross_request_drafters: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: EngineConfig, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir

    @abc.abstractmethod
    def start(self) -> None:
        """Launch (or attach to) the engine and return once it is ready."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Release everything start() acquired; must be safe to call twice."""

    def info(self) -> dict[str, Any]:
        """Version, launch command, url: recorded in the results."""
        return {"engine": self.name, "drafter": self.config.drafter}

    def reset_state(self) -> StateReset:
        """Called before each case (and before a repeat-check pass), with nothing in flight.

        In-process engines build their drafter per request; an engine class that declares a
        cross-request drafter overrides this.
        """
        if self.config.drafter in self.cross_request_drafters:
            return StateReset("none", ok=False, warning=(
                f"{self.name} drafter {self.config.drafter!r} keeps state across requests and this engine "
                "has no way to reset it: earlier cases can inflate this case's acceptance"))
        return StateReset("not needed", detail=f"{self.name} {self.config.drafter!r} keeps no drafter state "
                                               "across requests")


class HttpEngine(Engine):
    """An engine reached over HTTP; the client owns the transport."""

    base_url: str = ""

    @abc.abstractmethod
    def build_request(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> HttpRequest:
        ...

    @abc.abstractmethod
    def new_parser(self) -> StreamParser:
        ...

    async def run_counters(self) -> Counters | None:
        """Run-level SD counters snapshot (vLLM's Prometheus); None when per-request only."""
        return None


class InProcessEngine(Engine):
    """An engine living in this process (transformers)."""

    @abc.abstractmethod
    def generate(
        self,
        prompt_ids: Sequence[int],
        sampling: SamplingParams,
        on_chunk: Callable[[Sequence[int]], None],
    ) -> Counters | None:
        """Generate, calling on_chunk(new_token_ids) once per step; returns engine counters."""
