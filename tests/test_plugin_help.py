"""`pytest --help` must keep working wherever the plugin is installed, and list our options."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pytest_speedbench.settings.options import OPTIONS


def test_pytest_help_lists_every_speedbench_option(pytester: pytest.Pytester):
    """A fresh pytest process (entry-point plugin loading, argparse formatting) prints the help."""
    result = pytester.runpytest_subprocess("--help")
    assert result.ret == 0, result.stderr.str()
    out = result.stdout.str()
    assert "speculative decoding benchmarks (pytest-speedbench)" in out
    for spec in OPTIONS:
        assert spec.flag in out, spec.flag
    # the literal percent signs of the rule example survive argparse's %-formatting
    assert "acceptance_length:-3%" in out
    assert "Traceback" not in result.stderr.str()


@pytest.mark.parametrize("script", sorted(p.name for p in (Path(__file__).resolve().parents[1] / "benchmarks")
                                          .glob("bench_*.py")))
def test_every_benchmark_script_prints_its_help(script: str):
    """The benchmark scripts' help texts quote the default rules (with %), like the plugin's."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "benchmarks" / script),
                           "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage:")
