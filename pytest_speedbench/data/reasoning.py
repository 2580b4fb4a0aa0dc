"""The end of a reasoning section: per model family, and where it falls in an output.

Reasoning models write a thinking section, then the answer; the breakdown in
metrics/breakdowns.py splits decode steps at the end marker. `--thinking-end=auto` picks the
marker from the model's name (MARKERS, first match), `</think>` when no family matches; a
literal string sets it; `off` turns the split off.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

#: model-name substring (lowercase) -> the text that ends the reasoning section
MARKERS: tuple[tuple[str, str], ...] = (
    ("gpt-oss", "<|channel|>final<|message|>"),  # harmony: the final channel starts the answer
    ("magistral", "[/THINK]"),
    ("qwen3", "</think>"),
    ("deepseek-r1", "</think>"),
    ("qwq", "</think>"),
    ("nemotron", "</think>"),
)
DEFAULT_MARKER = "</think>"


def resolve_marker(setting: str | None, model: str | None) -> str | None:
    """The marker text for `--thinking-end` (`auto`, `off` or a literal) and the model name."""
    if setting is None or setting == "auto":
        name = (model or "").lower()
        return next((marker for family, marker in MARKERS if family in name), DEFAULT_MARKER)
    return None if setting in ("off", "") else setting


def boundary_finder(tokenizer: Any, marker: str) -> Callable[[Sequence[int]], int | None]:
    """A function: output ids -> the output position just after the first `marker`, or None.

    Found in the decoded text, so a marker the tokenizer splits into several tokens (or that
    merges with its neighbours) is found as well as a single special token; the boundary is the
    end of the token that completes the marker.
    """

    def contains(ids: Sequence[int]) -> bool:
        return marker in tokenizer.decode(list(ids), skip_special_tokens=False)

    def find(ids: Sequence[int]) -> int | None:
        if not contains(ids):
            return None
        lo, hi = 1, len(ids)  # the shortest prefix that contains the marker (binary search)
        while lo < hi:
            mid = (lo + hi) // 2
            if contains(ids[:mid]):
                hi = mid
            else:
                lo = mid + 1
        return lo

    return find
