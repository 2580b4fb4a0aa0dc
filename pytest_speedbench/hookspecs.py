"""Hook specifications pytest-speedbench adds (registered through pytest_addhooks)."""

from __future__ import annotations

from typing import Any


def pytest_speedbench_case_finished(config: Any, case: Any, entry: dict[str, Any]) -> None:
    """Called after a case was measured, with its benchmark entry (params, stats, extra_info).

    Implementations may add keys to entry["extra_info"]; they must not rename existing ones.
    """


def pytest_speedbench_results(config: Any, document: dict[str, Any]) -> None:
    """Called with the whole results document before each save; may add top-level data."""
