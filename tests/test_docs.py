"""The README documents every option and every subcommand the code has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_speedbench.cli import build_parser
from pytest_speedbench.settings.options import OPTIONS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.mark.parametrize("flag", [o.flag for o in OPTIONS])
def test_every_option_is_in_the_readme(flag: str) -> None:
    assert f"`{flag}`" in README


def test_every_subcommand_is_in_the_readme() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    missing = [name for name in sub.choices if f"speedbench {name}" not in README and f"`{name}`" not in README]
    assert not missing, f"subcommands missing from README: {missing}"


def _check_readme_module():
    """.ci/check-readme, the CI step that runs the README's commands (a script without .py)."""
    from importlib.machinery import SourceFileLoader
    from importlib.util import module_from_spec, spec_from_loader

    path = Path(__file__).resolve().parent.parent / ".ci" / "check-readme"
    loader = SourceFileLoader("check_readme", str(path))
    module = module_from_spec(spec_from_loader("check_readme", loader))
    loader.exec_module(module)
    return module


def test_every_readme_command_is_run_by_ci_or_says_why_not() -> None:
    check = _check_readme_module()
    commands = check.readme_commands(README)
    assert "tox exec -e bench -- speedbench compare 0001 latest" in commands  # comment dropped
    assert any(c.startswith("tox -e bench -- --engine=sglang --server-url=http://HOST:30000 --drafter=eagle3 "
                            "--split=qualitative") for c in commands)  # continuation joined
    assert not set(check.NOT_RUN) - set(commands), "NOT_RUN names commands the README no longer has"
    placeholders = [c for c in commands if re.search(r"\bHOST\b|\bDIR\b", c) and c not in check.NOT_RUN]
    assert not placeholders, f"README commands with placeholders that CI would try to run: {placeholders}"
    run = [c for c in commands if c not in check.NOT_RUN]
    assert any("--dataset=prepared/" in c for c in run) and len(run) >= 10
