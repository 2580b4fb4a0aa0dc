"""Per-request rows saved with each case, so later analyses can pair runs by prompt id.

`speedbench sweep` compares draft lengths by a paired bootstrap over prompts and `speedbench
predict` refits step-latency curves from saved results; both need per-request quantities that
the run-level summaries do not keep. One row per measured, successful request turn:

    id, cat, turn      prompt id, category, turn index
    isl                prompt tokens of turn 0 (None for later turns: their context grows)
    tokens             N = sum of L_j (all tokens streamed for the turn)
    step_tokens        N - L_0 (tokens produced by decode steps)
    e2e_s              t_{n-1} - t_s
    decode_s           t_{n-1} - t_0
    steps              decode steps D, reconciled as for the headline AL (metrics/steps.py):
                       chunks, or engine counters where the stream coalesced or split steps;
                       None when only run-level counters overruled the chunks
    al                 request AL = step_tokens / steps (None without a step)

Pure: no I/O. Values are rounded to microseconds / 6 digits to keep results files small.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_speedbench.measure.records import RequestRecord, RunRecords
from pytest_speedbench.metrics import request as R
from pytest_speedbench.metrics import run as M


def _r(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def request_row(r: RequestRecord, steps: int | None, *, isl: int | None) -> dict[str, Any]:
    """One request's row (see the module docstring for the columns)."""
    step_tokens = R.request_step_tokens(r)
    return {
        "id": r.prompt_id,
        "cat": r.category,
        "turn": r.turn,
        "isl": isl if r.turn == 0 else None,
        "tokens": r.num_tokens,
        "step_tokens": step_tokens,
        "e2e_s": _r(R.request_e2e(r)),
        "decode_s": _r(R.request_decode_time(r)),
        "steps": steps,
        "al": _r(step_tokens / steps) if steps else None,
    }


def per_request_rows(
    run: RunRecords, input_tokens: Mapping[str, int] | None = None, *, draft_length: int | None = None
) -> list[dict[str, Any]]:
    """Rows of the measured successful requests of `run`, in record order."""
    ok = [r for r in run.measured if r.ok]
    view = M.build_step_view(ok, run.engine_counters, draft_length)
    # per-request D unless only run-level counters decided (then request_als is empty)
    known = {id(r): c.decode_steps for r, c in view.per_request} if view.request_als else {}
    steps = {id(r): known.get(id(r), 0 if R.request_steps(r) == 0 else None) for r in ok}
    lengths = input_tokens or {}
    return [request_row(r, steps[id(r)], isl=lengths.get(r.prompt_id)) for r in ok]


def mean_isl(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Mean turn-0 prompt length over `rows`; None when no row knows it."""
    values = [row["isl"] for row in rows if row.get("isl") is not None]
    return sum(values) / len(values) if values else None
