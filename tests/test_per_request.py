"""Per-request rows saved with each case (the sweep's pairing and the predictor's inputs)."""

from __future__ import annotations

import pytest

from pytest_speedbench.measure.records import RequestRecord, RunRecords
from pytest_speedbench.metrics import run as M
from pytest_speedbench.metrics.per_request import mean_isl, per_request_rows


def record(prompt_id: str, turn: int = 0, counters=None, error=None, warmup=False) -> RequestRecord:
    # prefill at 0.1 s (1 token), then 3 events of 1 token at 0.02 s spacing
    return RequestRecord(prompt_id, "coding", turn, 0.0, [0.1, 0.12, 0.14, 0.16], [1, 1, 1, 1],
                         counters=counters, error=error, warmup=warmup)


def test_rows_from_chunks_and_from_counters() -> None:
    """b's engine counted 2 decode steps where 3 one-token events arrived: its row follows the
    counters (one token per event), as the headline AL does; a's rows follow the chunks."""
    run = RunRecords([
        record("a"), record("a", turn=1), record("b", counters={"decode_steps": 2, "accepted": 1}),
        record("c", error="boom"), record("w", warmup=True),
    ])
    chunk_rows = per_request_rows(run, {"a": 100, "b": 300})
    assert [r["id"] for r in chunk_rows] == ["a", "a", "b"]
    first = chunk_rows[0]
    assert first["tokens"] == 4 and first["step_tokens"] == 3 and first["steps"] == 3
    assert first["al"] == pytest.approx(1.0)
    assert first["e2e_s"] == pytest.approx(0.16) and first["decode_s"] == pytest.approx(0.06)
    assert first["isl"] == 100 and chunk_rows[1]["isl"] is None  # later turns: context grew
    counter_rows = per_request_rows(run)
    b = counter_rows[2]
    assert b["steps"] == 2 and b["al"] == pytest.approx(1.5)  # step tokens / engine decode steps
    assert M.compute_run_metrics(run)["acceptance_length_by_category"]["coding"] == pytest.approx(
        sum(row["al"] for row in counter_rows) / 3)  # rows and headline share one source
    assert counter_rows[0]["steps"] == 3  # no counters on this request: chunks
    assert mean_isl(chunk_rows) == pytest.approx(200.0) and mean_isl(counter_rows) is None
