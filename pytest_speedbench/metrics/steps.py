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

At the max-tokens cut with coalesced events neither source is exact: the chunks undercount
(merged steps) and D = E - A undercounts too (A holds the cut drafts), by c = the cut
drafts, 0 <= c <= min(A, gamma). One event per step settles c (end_of_request_truncation);
without that, nothing the client sees does: the last step's emitted r and accepted a give
c = 1 + a - r, and a coalesced last event hides r (a one-token last event is equally a cut
3-draft step or an undrafted one). The server's own count of decode steps does
(`server_total`: vLLM's inter-token-latency histogram observes one sample per request per
decode step): `hidden_cut_steps` bounds what each request may hide, `assign_server_steps`
gives the run's missing steps to the requests that may hide them.
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


def framing_matches_counters(step_lengths: Sequence[int], accepted_per_pos: Sequence[float]) -> bool:
    """Whether the decode events are exactly the engine's steps, nothing merged and nothing cut:
    a drafted step accepting a drafts emits one event of 1 + a tokens, so for every draft
    position k the events with >= k + 1 tokens number c_k, the steps accepting >= k drafts
    (an undrafted step and a step accepting none both emit 1 token and count nowhere). A
    merge adds tokens to an event and a cut removes some, so either breaks the match (both at
    every position at once only by a coincidence no real run has shown)."""
    return all(sum(1 for n in step_lengths if n >= k + 1) == int(c) for k, c in enumerate(accepted_per_pos, 1)) \
        and not any(n > len(accepted_per_pos) + 1 for n in step_lengths)


def hidden_cut_steps(
    tokens: int, chunk_steps: int, counters: Counters | None, *, gamma: int | None,
    step_lengths: Sequence[int] | None = None,
) -> int:
    """Decode steps the max-tokens cut may hide from reconcile_steps' D: c <= min(A, gamma) when D
    came from D_k = E - A (derived) and the chunks could not show the cut (D_c <= D_k: merged
    events, possibly exactly as many as the cut). 0 when the count is exact: decode-step
    counters; chunks above D_k (end_of_request_truncation takes them); or events that are the
    engine's steps by its own per-position counts (framing_matches_counters: nothing merged,
    nothing cut)."""
    if not counters or counters.get("decode_steps") is not None or counters.get("accepted") is None:
        return 0
    accepted = int(counters["accepted"])
    derived = tokens - accepted
    if derived <= 0 or chunk_steps > derived:
        return 0
    per_pos = counters.get("accepted_per_pos")
    if step_lengths is not None and per_pos and framing_matches_counters(step_lengths, per_pos):
        return 0
    return min(accepted, gamma) if gamma is not None else accepted


def assign_server_steps(
    counts: Sequence[StepCount], hidden: Sequence[int], last_event_tokens: Sequence[int], server_total: int,
) -> tuple[list[StepCount], int]:
    """The run's decode steps made to add up to the server's own count, where the cut can explain it.

    residual R = server_total - sum D. With 0 < R <= sum(hidden), R steps go to the requests
    that may hide them (each at most its `hidden`): the ones whose chunks showed merged events
    (coalesced_events) first, then the shortest last event (a cut leaves r = 1 + a - c tokens),
    then request order. With one such request, or R = sum(hidden), that is exact; with
    several it is the most likely split and the run total is exact. Otherwise (R = 0, or R out
    of reach: other traffic on the server, a counting change) nothing changes.
    Returns (counts, R before assignment).
    """
    residual = server_total - sum(c.decode_steps for c in counts)
    if residual <= 0 or residual > sum(hidden):
        return list(counts), residual
    order = sorted(range(len(counts)), key=lambda i: (counts[i].reason != COALESCED, last_event_tokens[i], i))
    out, left = list(counts), residual
    for i in order:
        take = min(hidden[i], left)
        if take:
            out[i] = StepCount(counts[i].decode_steps + take, SOURCE_COUNTERS, COALESCED)
            left -= take
    return out, residual
