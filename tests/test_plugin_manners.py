"""pytest manners: with the plugin installed, a session that collects no speedbench case and passes
no speedbench option hears nothing from it and finds nothing changed."""

from __future__ import annotations

import pytest
from conftest import SUITE


def test_other_projects_session_is_untouched(pytester: pytest.Pytester):
    pytester.makepyfile(test_a="def test_one():\n    assert True\n\ndef test_two():\n    assert True\n")
    before = sorted(p.name for p in pytester.path.iterdir())
    result = pytester.runpytest("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=2)
    ours = [line for line in result.outlines + result.errlines
            if "speedbench" in line and not line.startswith(("plugins:", "platform "))]
    # pytest's own header names the plugin list and, in -v, the interpreter (a venv under ~/.cache/speedbench)
    assert ours == []
    # no .speedbench, no results, no logs (pytest-benchmark, a dependency, makes its own .benchmarks;
    # pytest's assertion rewriting writes __pycache__ unless PYTHONDONTWRITEBYTECODE is set)
    assert sorted(p.name for p in pytester.path.iterdir() if p.name not in (".benchmarks", "__pycache__")) == before
    result.stdout.fnmatch_lines(["test_a.py::test_one PASSED*", "test_a.py::test_two PASSED*"])  # order kept


def test_speedbench_session_still_has_its_header(pytester: pytest.Pytester, tiny_tokenizer_dir, prompts_file):
    """No option and no speedbench.yaml, but speedbench cases collected: the header comes at collection."""
    pytester.makepyfile(test_speedbench=SUITE)
    result = pytester.runpytest("-p", "no:cacheprovider", "--co")
    result.stdout.fnmatch_lines(["speedbench: prompts: *", "speedbench: * case(s) in the matrix"])
