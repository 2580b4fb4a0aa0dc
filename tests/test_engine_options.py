"""Every key under `engines: <name>:` in speedbench.yaml reaches the engine; an unknown key is a
usage error naming it and the valid ones (the EngineSpec's accepted options)."""

from __future__ import annotations

import json
import shlex
import textwrap
from pathlib import Path

import pytest
from conftest import SUITE

from pytest_speedbench.engines.llama_build import cache_root
from pytest_speedbench.engines.llamacpp import build_argv
from pytest_speedbench.errors import UsageError
from pytest_speedbench.session import SpeedbenchSession
from pytest_speedbench.settings.matrix import EngineKey
from pytest_speedbench.settings.options import build_settings

YAML = """
engine: [llamacpp, vllm, hf]
drafter: [none]
engines:
  llamacpp:
    ctx_per_slot: 1536
    threads: 1
  vllm:
    model: some/model
    speculative_config: {prompt_lookup_min: 2}
    tensor_parallel: 2
  hf:
    dtype: float32
    ngram-size: 3
"""


def _settings(tmp_path: Path, text: str):
    path = tmp_path / "speedbench.yaml"
    path.write_text(textwrap.dedent(text))
    return build_settings({}, {}, path)


def test_every_engine_option_reaches_the_engine_config(tmp_path):
    session = SpeedbenchSession(_settings(tmp_path, YAML), tmp_path)
    llama = session.pool.config(EngineKey("llamacpp", "none"))
    assert dict(llama.extra) == {"ctx_per_slot": 1536, "threads": 1}
    argv = build_argv("llama-server", llama, model="m.gguf", draft_model=None, port=1, threads=llama.option("threads"))
    assert argv[argv.index("--parallel") + 1] == "1"
    assert argv[argv.index("--ctx-size") + 1] == "1536"
    vllm = session.pool.config(EngineKey("vllm", "none"))
    assert vllm.option("speculative_config") == {"prompt_lookup_min": 2}
    assert vllm.model == "some/model" and vllm.engine_args[:2] == ("--tensor-parallel-size", "2")
    assert dict(session.pool.config(EngineKey("hf", "none")).extra) == {"dtype": "float32", "ngram_size": 3}


@pytest.mark.parametrize("engine, key", [("llamacpp", "ctx_per_slott"), ("hf", "speculative_config")])
def test_unknown_engine_option_is_a_usage_error_naming_the_valid_ones(tmp_path, engine, key):
    with pytest.raises(UsageError) as err:
        _settings(tmp_path, f"engines:\n  {engine}:\n    {key}: 1\n")
    message = str(err.value)
    assert f"unknown option {key!r} for engine {engine}" in message
    assert "valid options:" in message and "engine_args" in message
    assert ("ctx_per_slot" in message) == (engine == "llamacpp") and ("dtype" in message) == (engine == "hf")


def test_unknown_engine_option_stops_the_session(pytester: pytest.Pytester):
    pytester.makepyfile(test_speedbench=SUITE)
    pytester.makefile(".yaml", speedbench="engines:\n  llamacpp:\n    ctx_size: 1536\n")
    result = pytester.runpytest("--engine=llamacpp", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*engines.llamacpp: unknown option 'ctx_size' for engine llamacpp; "
                                 "valid options: *ctx_per_slot*"])


#: the real cache (built llama-server, converted models), read before pytester moves HOME
CACHE = cache_root()


@pytest.mark.real_engine
def test_ctx_per_slot_reaches_the_real_llama_server(pytester: pytest.Pytester, monkeypatch):
    from pytest_speedbench.engines.llama_build import find_llama_server
    from pytest_speedbench.errors import EngineNotInstalled

    monkeypatch.setenv("SPEEDBENCH_CACHE", str(CACHE))
    try:
        find_llama_server()
    except EngineNotInstalled as exc:
        pytest.skip(f"llama-server not built: {exc}")
    pytester.makepyfile(test_speedbench=SUITE)
    pytester.makefile(".yaml", speedbench="engines:\n  llamacpp:\n    ctx_per_slot: 1536\n    threads: 1\n")
    out = pytester.path / "run.json"
    result = pytester.runpytest(
        "--engine=llamacpp", "--drafter=none", "--batch-size=1", "--num-prompts=1", "--category=coding",
        "--split=qualitative", "--warmup=0", "--output-len=4", f"--speedbench-json={out}",
        "-p", "no:cacheprovider", "-W", "ignore::Warning",
    )
    result.assert_outcomes(passed=1)
    launch = json.loads(out.read_text())["speedbench"]["engines"]["llamacpp-none"]["launch_command"]
    argv = shlex.split(launch) if isinstance(launch, str) else list(launch)
    assert argv[argv.index("--ctx-size") + 1] == "1536"
