"""Per-request quantities of one request turn: pure functions of a RequestRecord (docs/metrics.md).

For one request turn: send time t_s; chunks j = 0..n-1 arriving at t_j carrying L_j tokens;
N = sum L_j. Chunk 0 is prefill's output, so decode steps seen in the stream are chunks 1..n-1;
metrics/steps.py reconciles them with the engine counters (measure/records.py).
"""

from __future__ import annotations

from pytest_speedbench.measure.records import RequestRecord



def request_steps(r: RequestRecord) -> int:
    """Verification steps seen in the stream: chunks 1..n-1."""
    return max(len(r.chunk_tokens) - 1, 0)


def request_step_tokens(r: RequestRecord) -> int:
    """Tokens produced by verification steps: N - L_0."""
    return sum(r.chunk_tokens[1:])


def request_al(r: RequestRecord) -> float | None:
    """Request AL = (N - L_0) / (n - 1); None without a step."""
    steps = request_steps(r)
    return request_step_tokens(r) / steps if steps else None


def request_ttft(r: RequestRecord) -> float | None:
    """TTFT = t_0 - t_s."""
    return r.chunk_times[0] - r.t_send if r.chunk_times else None


def request_decode_time(r: RequestRecord) -> float | None:
    """t_{n-1} - t_0: the time spent in verification steps; None without a step."""
    return r.chunk_times[-1] - r.chunk_times[0] if request_steps(r) else None


def request_step_latency(r: RequestRecord) -> float | None:
    """Step latency = (t_{n-1} - t_0) / (n - 1)."""
    decode = request_decode_time(r)
    return decode / request_steps(r) if decode is not None else None


def request_tpot(r: RequestRecord) -> float | None:
    """TPOT = (t_{n-1} - t_0) / (N - L_0)."""
    decode, tokens = request_decode_time(r), request_step_tokens(r)
    return decode / tokens if decode is not None and tokens > 0 else None


def request_user_tps(r: RequestRecord) -> float | None:
    """User TPS = (N - L_0) / (t_{n-1} - t_0); None when no time elapsed."""
    decode = request_decode_time(r)
    return request_step_tokens(r) / decode if decode is not None and decode > 0 else None


def request_e2e(r: RequestRecord) -> float | None:
    """E2E = t_{n-1} - t_s."""
    return r.chunk_times[-1] - r.t_send if r.chunk_times else None


def request_send_lag(r: RequestRecord) -> float | None:
    """Open loop: t_send - max(t_scheduled, t_slot), the client's own delay in sending a due
    request once a slot under the cap was free; None for closed-loop requests."""
    if r.t_scheduled is None:
        return None
    return r.t_send - max(r.t_scheduled, r.t_slot if r.t_slot is not None else r.t_scheduled)


def request_cap_wait(r: RequestRecord) -> float | None:
    """Open loop: how long a due request waited for a slot under the concurrency cap (0 when
    the cap did not bind); None for closed-loop requests."""
    if r.t_scheduled is None:
        return None
    return max(0.0, r.t_slot - r.t_scheduled) if r.t_slot is not None else 0.0
