"""Bad values stop the session up front (exit 4, one message, no traceback, nothing saved), and an
unreachable server fails its cases with one line naming the URL and the cause."""

from __future__ import annotations

from pathlib import Path

import httpcore  # noqa: F401  (imported at collection: see tests/test_plugin_gates.py)
import pytest
from conftest import SUITE, free_port


@pytest.fixture
def run(pytester: pytest.Pytester, tiny_tokenizer_dir: Path):
    pytester.makepyfile(test_speedbench=SUITE)

    def go(*args: str) -> pytest.RunResult:
        return pytester.runpytest("--engine=sglang", "--drafter=none", f"--tokenizer={tiny_tokenizer_dir}",
                                  "--num-prompts=1", "--warmup=0", "--output-len=4", "-p", "no:cacheprovider", *args)

    return go


@pytest.mark.parametrize("option, message", [
    ("--category=codign",
     "ERROR: pytest-speedbench: unknown category in --category for bundled 'codign'; valid values: coding, "
     "humanities, math, multilingual, qa, rag, reasoning, roleplay, stem, summarization, writing; "
     "did you mean 'coding'?"),
    ("--model=/nonexistent/model",
     "ERROR: pytest-speedbench: --model: /nonexistent/model does not exist (give a model folder, a GGUF file, "
     "a bundled model name or a hub id)"),
    ("--draft-model=./no-such-draft",
     "ERROR: pytest-speedbench: --draft-model: ./no-such-draft does not exist (give a model folder, a GGUF file, "
     "a bundled model name or a hub id, or layers:N)"),
    ("--server-url=127.0.0.1:30000",
     "ERROR: pytest-speedbench: --server-url: '127.0.0.1:30000' is not an http(s) URL; valid forms: "
     "http://HOST:PORT, https://HOST:PORT, or DRAFTER=URL,... per drafter; did you mean http://127.0.0.1:30000?"),
    ("--server-url=none=localhost:30000",
     "ERROR: pytest-speedbench: --server-url (none=...): 'localhost:30000' is not an http(s) URL; valid forms: "
     "http://HOST:PORT, https://HOST:PORT, or DRAFTER=URL,... per drafter; did you mean http://localhost:30000?"),
])
def test_bad_value_exits_4_with_one_message_and_saves_nothing(run, pytester: pytest.Pytester, option: str,
                                                               message: str):
    result = run(option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    lines = [line for line in result.errlines + result.outlines if line.strip()]
    assert lines == [message], lines  # one message, no traceback, no header echoing the bad value
    assert not (pytester.path / ".speedbench").exists()


def test_unreachable_server_is_one_line_with_the_url_and_cause(run, pytester: pytest.Pytester):
    url = f"http://127.0.0.1:{free_port()}"
    result = run(f"--server-url={url}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    cause = (f"sglang-none-qualitative-bs1-t0: EngineError: cannot reach SGLang server at {url}: "
             "[Errno 111] Connection refused")
    assert cause in result.outlines
    assert "Traceback" not in out and "def _probe_server_info" not in out and "raise EngineError" not in out
    # the frames are one option away
    long = run(f"--server-url={url}", "--tb=long")
    assert "raise EngineError" in long.stdout.str()


def test_a_typo_stops_before_engine_client_and_maths_code_is_imported(pytester: pytest.Pytester):
    """A typo'd category must exit in about pytest's own start-up time: the session checks its
    inputs before importing the case runner, the client, numpy or an engine's packages."""
    import subprocess
    import sys

    pytester.makepyfile(test_speedbench=SUITE)
    probe = ("import sys, pytest\n"
             "code = pytest.main(['--engine=hf', '--category=codign', '-q', '-p', 'no:cacheprovider'])\n"
             "heavy = ('numpy', 'torch', 'transformers', 'aiohttp', 'pytest_speedbench.case_runner',\n"
             "         'pytest_speedbench.measure.client', 'pytest_speedbench.engine_pool')\n"
             "print('LOADED', int(code), [m for m in heavy if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=pytester.path, capture_output=True, text=True,
                         timeout=120).stdout
    assert "LOADED 4 []" in out, out
