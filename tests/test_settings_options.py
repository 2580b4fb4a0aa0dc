"""OPTIONS are the one source of option defaults and definitions: Settings repeats no default, and
the options `speedbench` commands share with the plugin are registered from the same OptionSpec."""

from __future__ import annotations

import argparse
import dataclasses

from pytest_speedbench import cli
from pytest_speedbench.settings.options import (
    COMMAND_OPTIONS, OPTION_BY_NAME, OPTIONS, Settings, argparse_help, build_settings, default_settings,
)


def test_settings_fields_are_the_options_without_defaults():
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    for spec in OPTIONS:
        field = fields[spec.name]
        assert field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING, spec.name
    defaults = default_settings()
    assert {spec.name: getattr(defaults, spec.name) for spec in OPTIONS} == {spec.name: spec.default for spec in OPTIONS}
    assert build_settings({}).output_len == OPTION_BY_NAME["output_len"].default
    # list defaults are copies, never shared between Settings objects
    default_settings().engine.append("x")
    assert default_settings().engine == OPTION_BY_NAME["engine"].default


def _subcommand_actions(name: str) -> dict[str, argparse.Action]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return {a.dest: a for a in sub._actions}


def test_commands_share_the_plugins_option_definitions():
    for command, names in (("compare", COMMAND_OPTIONS), ("report", ("storage",)), ("export", ("storage",))):
        actions = _subcommand_actions(command)
        for name in names:
            spec = OPTION_BY_NAME[name]
            action = actions[name]
            assert action.option_strings == ["--" + name.replace("_", "-")]
            assert action.help.startswith(argparse_help(spec.help))
            assert action.default == (False if spec.kind == "bool" else spec.default)
