"""What the client measures: one record per request turn.

Records are the only thing that flows from the client to the metrics, so they hold raw
observations (receipt timestamps, token counts, engine counters) and nothing derived.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pytest_speedbench.engines.counters import Counters


@dataclass(slots=True)
class RequestRecord:
    """One request turn as the client saw it.

    `chunk_times[j]` is the `time.perf_counter()` receipt time of the j-th chunk that carried
    tokens and `chunk_tokens[j]` its number of new tokens (L_j). Chunk 0 is the prefill chunk.
    """

    prompt_id: str
    category: str
    turn: int = 0
    t_send: float = 0.0
    chunk_times: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    output_ids: list[int] = field(default_factory=list)
    counters: Counters | None = None
    error: str | None = None
    warmup: bool = False
    #: open-loop runs (--request-rate): when the request was due and, if the concurrency cap made
    #: it wait, when its slot was free (perf_counter); send lag = t_send - max(t_scheduled, t_slot)
    t_scheduled: float | None = None
    t_slot: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and len(self.chunk_tokens) > 0

    @property
    def num_tokens(self) -> int:
        return sum(self.chunk_tokens)


@dataclass(slots=True)
class RunRecords:
    """Everything one case's run produced, handed to `metrics.compute_run_metrics`."""

    requests: list[RequestRecord]
    # Run-level engine counters (e.g. vLLM Prometheus deltas around the measured window).
    engine_counters: Counters | None = None
    # Client self-diagnostics (event-loop lag, sharding) recorded with the results.
    client_info: dict[str, Any] = field(default_factory=dict)

    @property
    def measured(self) -> list[RequestRecord]:
        return [r for r in self.requests if not r.warmup]
