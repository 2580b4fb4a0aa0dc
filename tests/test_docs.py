"""The README documents every option and every subcommand the code has."""

from __future__ import annotations

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
