"""Every `speedbench` command follows the one convention of commands/__init__.py: its leaf parser
calls a `run`-style function through `func`, registered with `commands.command`."""

from __future__ import annotations

import argparse
import inspect

from pytest_speedbench.cli import build_parser


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaves(child, path + (name,))


def test_every_command_has_a_run_function_returning_the_exit_code():
    leaves = dict(_leaves(build_parser()))
    assert {("compare",), ("cache", "list"), ("cache", "clear"), ("merge",), ("list",)} <= set(leaves)
    for path, parser in leaves.items():
        func = parser.get_default("func")
        assert func is not None, f"speedbench {' '.join(path)} has no run function"
        assert func.__name__.startswith("run"), f"speedbench {' '.join(path)}: {func.__name__} is not run/run_<action>"
        assert inspect.signature(func).return_annotation in ("int", int), f"{func.__qualname__} must return the exit code"
