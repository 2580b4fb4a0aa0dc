"""Decode steps per request: one acceptance-length definition for every engine (pure maths).

Definitions (docs/metrics.md), for one request turn with chunks j = 0..n-1
carrying L_j tokens, N = sum L_j:
- decode step: a target forward pass after the prefill token that emitted tokens for the
  request, drafted or not (a step with no draft emits 1 token); D = decode steps.
- drafted step: a decode step with at least one proposed draft token; S = drafted steps.
- E = N - L_0: tokens after the prefill token; A = accepted draft tokens.
- request AL = E / D (tokens per decode step, SPEED-Bench's AL);
  per-draft AL = 1 + A / S (vLLM's and SGLang's own "mean acceptance length").

Where D comes from:
- chunks: D_chunks = n - 1, exact when the stream is step-framed (one event per decode step);
- counters: `decode_steps` when the engine counts every decode step (SGLang spec_verify_ct,
  llama.cpp, TensorRT-LLM, hf); otherwise derived as D = E - A (vLLM counts drafted steps only).
  Engines count the last step's accepted drafts before truncation at max tokens, so a derived
  D can fall short of the truth by up to min(A, gamma) per request.

`reconcile_steps` picks D and names the cause from REASONS (al_source_reason).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pytest_speedbench.engines.counters import Counters

SOURCE_CHUNKS = "chunks"
SOURCE_COUNTERS = "engine_counters"

CHUNKS_ARE_STEPS = "chunks_are_steps"
COUNTERS_DRAFTED_ONLY = "counters_cover_drafted_steps_only"
END_TRUNCATION = "end_of_request_truncation"
COALESCED = "coalesced_events"
ONE_TOKEN_PER_EVENT = "one_token_per_event"
NO_COUNTERS = "no_engine_counters"  # nothing to check the chunks against

#: al_source_reason values, most telling first (a run reports the first one any request has)
REASONS: tuple[str, ...] = (
    ONE_TOKEN_PER_EVENT, COALESCED, END_TRUNCATION, COUNTERS_DRAFTED_ONLY, CHUNKS_ARE_STEPS, NO_COUNTERS,
)

REASON_TEXT = {
    CHUNKS_ARE_STEPS: "one streamed event per decode step: chunks agree with the engine counters",
    NO_COUNTERS: "no engine SD counters; decode steps from streamed chunks (assumed one event per step)",
    COUNTERS_DRAFTED_ONLY: "the engine counts drafted steps only; decode steps = drafted + undrafted, "
                           "and the chunks agree with tokens - accepted",
    END_TRUNCATION: "the engine counted accepted drafts of the last step that max tokens cut off; "
                    "chunks give the decode steps",
    COALESCED: "the server coalesced several decode steps into one event; decode steps from engine counters",
    ONE_TOKEN_PER_EVENT: "the server streams fewer tokens per event than a step emits (one token per event); "
                         "decode steps from engine counters",
}


@dataclass(frozen=True, slots=True)
class StepCount:
    """A request's decode steps, where they came from and why."""

    decode_steps: int
    source: str
    reason: str


def counter_decode_steps(tokens: int, counters: Counters | None) -> int | None:
    """D from counters: `decode_steps` when the engine counts every step, else E - A; None without counters."""
    if not counters:
        return None
    if counters.get("decode_steps") is not None:
        return int(counters["decode_steps"])
    if counters.get("accepted") is None:
        return None
    return tokens - int(counters["accepted"])


def reconcile_steps(
    tokens: int, chunk_steps: int, counters: Counters | None, *, gamma: int | None, step_framed: bool = True
) -> StepCount:
    """Decode steps D of one request, or of a run (summed tokens, chunk steps and counters,
    gamma = per-request draft length x requests).

    With E = tokens, D_c = chunk_steps and D_k = counter_decode_steps(E, counters):
    - no counters: D = D_c (chunks), reason no_engine_counters;
    - D_c = D_k: D = D_c (chunks), reason chunks_are_steps, or counters_cover_drafted_steps_only
      when the engine's drafted steps S < D;
    - D_c > D_k, D_k derived from E - A, D_c - D_k <= min(A, gamma) and the run is step-framed
      (some event carried > 1 token): D = D_c, end_of_request_truncation;
    - D_c > D_k otherwise: D = D_k (counters), one_token_per_event;
    - D_c < D_k: D = D_k (counters), coalesced_events.
    """
    counter_steps = counter_decode_steps(tokens, counters)
    if counter_steps is None or counter_steps <= 0 or counters is None:
        return StepCount(chunk_steps, SOURCE_CHUNKS, NO_COUNTERS)
    derived = counters.get("decode_steps") is None
    if chunk_steps == counter_steps:
        drafted = counters.get("drafted_steps")
        reason = COUNTERS_DRAFTED_ONLY if drafted is not None and drafted < chunk_steps else CHUNKS_ARE_STEPS
        return StepCount(chunk_steps, SOURCE_CHUNKS, reason)
    if chunk_steps > counter_steps:
        accepted = int(counters.get("accepted") or 0)
        window = min(accepted, gamma) if gamma is not None else accepted
        if derived and step_framed and chunk_steps - counter_steps <= window:
            return StepCount(chunk_steps, SOURCE_CHUNKS, END_TRUNCATION)
        return StepCount(counter_steps, SOURCE_COUNTERS, ONE_TOKEN_PER_EVENT)
    return StepCount(counter_steps, SOURCE_COUNTERS, COALESCED)


def per_draft_al(accepted: float, drafted_steps: float) -> float | None:
    """Per-draft AL = 1 + A / S (the engines' own figure); None when S = 0."""
    return 1.0 + accepted / drafted_steps if drafted_steps > 0 else None


def drafted_step_fraction(drafted_steps: float, decode_steps: float) -> float | None:
    """S / D: the share of decode steps in which the drafter proposed tokens; None when D = 0."""
    return drafted_steps / decode_steps if decode_steps > 0 else None


def run_reason(reasons: Sequence[str]) -> str | None:
    """The run's al_source_reason: the first of REASONS that any request has."""
    present = set(reasons)
    return next((r for r in REASONS if r in present), None)
