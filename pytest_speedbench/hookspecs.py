"""Hook specifications pytest-speedbench adds (registered through pytest_addhooks).

The three `firstresult` hooks produce the results document's parts, as pytest-benchmark's
`pytest_benchmark_generate_*` hooks do: the plugin's own implementations run last, so a
conftest or plugin that returns a value replaces them (returning None falls through).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_speedbench.settings.matrix import Case


def pytest_speedbench_case_finished(config: pytest.Config, case: Case, entry: dict[str, Any]) -> None:
    """Called after a case was measured, with its benchmark entry (params, stats, extra_info).

    Implementations may add keys to entry["extra_info"]; they must not rename existing ones.
    """


def pytest_speedbench_results(config: pytest.Config, document: dict[str, Any]) -> None:
    """Called with the whole results document before each save; may add top-level data."""


@pytest.hookspec(firstresult=True)
def pytest_speedbench_machine_info(config: pytest.Config) -> dict[str, Any] | None:
    """The document's `machine_info` (pytest-benchmark's fields plus `gpus`); asked once per
    session. Default: platform, CPU and nvidia-smi facts of this host."""


@pytest.hookspec(firstresult=True)
def pytest_speedbench_commit_info(config: pytest.Config) -> dict[str, Any] | None:
    """The document's `commit_info` ({id, time, author_time, dirty, project, branch}); asked once
    per session. Default: the git checkout of the current directory."""


@pytest.hookspec(firstresult=True)
def pytest_speedbench_results_document(
    config: pytest.Config,
    entries: list[dict[str, Any]],
    section: dict[str, Any],
    machine_info: dict[str, Any],
    commit_info: dict[str, Any],
) -> dict[str, Any] | None:
    """The whole results document from the benchmark entries, the `speedbench` section and the
    two infos; built before each save. Default: the pytest-benchmark-compatible schema of
    results/document.py."""
