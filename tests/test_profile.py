"""The demo's limits live in the shipped speedbench.yaml's `demo` profile and apply only to the demo."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_speedbench.errors import UsageError
from pytest_speedbench.settings.options import build_settings, default_settings

from conftest import REPO, SUITE

SHIPPED = REPO / "benchmarks" / "speedbench.yaml"
DEFAULTS = default_settings()


def test_no_options_is_the_demo_with_its_limits():
    s = build_settings({}, {}, SHIPPED)
    assert s.profile == "demo"
    assert s.engine == ["hf", "llamacpp"] and len(s.category) == 4 and s.num_prompts == 1
    assert s.drafter == ["none", "ngram"] and s.batch_sizes_for("llamacpp") == [1]
    # the demo's engines are not the user's: an engine that cannot run is skipped, not an error
    assert "engine" in s.from_profile and "engine" not in s.explicit


@pytest.mark.parametrize("cli", [{"engine": "sglang"}, {"dataset": "DIR"}, {"model": "m.gguf"},
                                 {"server_url": "http://h:1"}])
def test_naming_an_engine_dataset_model_or_server_leaves_the_demo(cli):
    s = build_settings(cli, {}, SHIPPED)
    assert s.profile is None
    assert s.category == [] and s.num_prompts == DEFAULTS.num_prompts and s.output_len == DEFAULTS.output_len
    assert s.per_engine == {}


def test_ini_or_top_level_yaml_naming_an_engine_also_leaves_the_demo(tmp_path: Path):
    assert build_settings({}, {"engine": "hf"}, SHIPPED).profile is None
    cfg = tmp_path / "speedbench.yaml"
    cfg.write_text(SHIPPED.read_text() + "dataset: bundled\n")
    assert build_settings({}, {}, cfg).profile is None


def test_the_profile_can_be_forced_on_or_off():
    s = build_settings({"profile": "demo", "engine": "hf"}, {}, SHIPPED)
    assert (s.profile, s.engine, s.num_prompts, "engine" in s.explicit) == ("demo", ["hf"], 1, True)
    assert build_settings({"profile": "none"}, {}, SHIPPED).num_prompts == DEFAULTS.num_prompts
    with pytest.raises(UsageError, match="'nope'; valid values: demo, none, off"):
        build_settings({"profile": "nope"}, {}, SHIPPED)


def test_command_line_beats_the_profile_also_in_its_engine_sections(tmp_path: Path):
    cfg = tmp_path / "speedbench.yaml"
    cfg.write_text("profiles:\n  demo:\n    num_prompts: 1\n    engines:\n      llamacpp:\n        batch_size: [1, 4]\n")
    assert build_settings({}, {}, cfg).batch_sizes_for("llamacpp") == [1, 4]
    s = build_settings({"batch_size": "2", "num_prompts": "3"}, {}, cfg)
    assert s.profile == "demo" and s.num_prompts == 3
    assert s.batch_sizes_for("llamacpp") == [2] and s.batch_sizes_for("hf") == [2]


def test_top_level_keys_apply_to_every_run_and_profiles_check_their_keys(tmp_path: Path):
    cfg = tmp_path / "speedbench.yaml"
    cfg.write_text("output_len: 16\nprofiles:\n  demo:\n    num_prompts: 2\n")
    assert (build_settings({}, {}, cfg).output_len, build_settings({}, {}, cfg).num_prompts) == (16, 2)
    assert build_settings({"engine": "hf"}, {}, cfg).output_len == 16
    cfg.write_text("profiles:\n  demo:\n    num_promts: 2\n")
    with pytest.raises(UsageError, match="num_promts"):
        build_settings({}, {}, cfg)


def test_header_says_which_prompts_and_how_many(pytester: pytest.Pytester):
    pytester.makepyfile(test_speedbench=SUITE)
    pytester.path.joinpath("speedbench.yaml").write_text(SHIPPED.read_text())
    demo = pytester.runpytest("--collect-only", "-p", "no:cacheprovider")
    demo.stdout.fnmatch_lines([
        "speedbench: profile 'demo' from *speedbench.yaml; naming --engine, --dataset*",
        "speedbench: prompts: bundled qualitative, 4 categories (coding, math, reasoning, summarization); "
        "1 prompt(s) per category (--num-prompts)",
        "speedbench: up to 32 new tokens per turn*",
    ])
    other = pytester.runpytest("--collect-only", "-p", "no:cacheprovider", "--dataset=bundled", "--engine=hf")
    other.stdout.fnmatch_lines(["speedbench: no profile*",
                                "speedbench: prompts: bundled qualitative, all categories; 4 prompt(s) per category*"])
