"""The engine registry: built from each engine module's SPEC plus the `pytest_speedbench.engines`
entry points, without importing heavy engine dependencies.

The end-to-end test installs a distribution the way pip would leave it (a module and a
`.dist-info` with `entry_points.txt`) in a folder on sys.path; the engine it declares runs a
case through the whole plugin with no edit to pytest_speedbench.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, SUITE

from pytest_speedbench import engines
from pytest_speedbench.engines.spec import EngineSpec
from pytest_speedbench.errors import EngineNotInstalled, UsageError
from pytest_speedbench.settings.matrix import expand

TOY_MODULE = '''
"""A toy in-process engine from another distribution: every step emits two tokens."""
from pytest_speedbench.engines.base import InProcessEngine
from pytest_speedbench.engines.spec import EngineSpec


class ToyEngine(InProcessEngine):
    name = "NAME"

    def start(self):
        self.started = True

    def stop(self):
        pass

    def info(self):
        return {**super().info(), "greeting": self.config.option("greeting"), "draft_length": self.config.draft_length}

    def generate(self, prompt_ids, sampling, on_chunk):
        on_chunk([1])
        for _ in range((sampling.max_new_tokens - 1) // 2):
            on_chunk([2, 3])
        return None


SPEC = EngineSpec("NAME", ToyEngine, drafters=("none", "ngram"), max_concurrency=4,
                  options={"greeting": "a word the toy engine records in its info"},
                  install_hint="pip install speedbench-toy")
'''


def install_toy(folder: Path, name: str = "toy") -> Path:
    """A pip-style install of `speedbench-toy` into `folder`: module + dist-info with the entry
    point, for an engine called `name`."""
    (folder / "speedbench_toy.py").write_text(TOY_MODULE.replace("NAME", name))
    info = folder / "speedbench_toy-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: speedbench-toy\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[pytest_speedbench.engines]\n{name} = speedbench_toy:SPEC\n")
    return folder


def test_builtin_specs_are_complete():
    specs = engines.registry()
    assert set(specs) >= {"sglang", "vllm", "trtllm", "llamacpp", "hf"}
    for name, spec in specs.items():
        assert spec.name == name == spec.engine_class.name
        assert set(spec.drafters) <= set(engines.DRAFTERS) and "none" in spec.drafters
    assert specs["hf"].max_concurrency == 1
    assert specs["vllm"].command_env == "SPEEDBENCH_VLLM_CMD"
    assert "ctx_per_slot" in specs["llamacpp"].options and "speculative_config" in specs["vllm"].options
    # one-time preparations (llama.cpp's build, hf's model conversion) are SPEC facts too
    assert specs["llamacpp"].preparation is not None and specs["hf"].preparation is not None
    assert specs["vllm"].preparation is None


def test_registry_does_not_import_engine_dependencies():
    code = ("import sys; from pytest_speedbench import engines; engines.registry(); "
            "print(sorted(m for m in ('torch', 'transformers', 'vllm', 'sglang', 'tensorrt_llm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_entry_point_must_give_an_engine_spec(tmp_path, monkeypatch):
    (tmp_path / "bad_toy.py").write_text("SPEC = 'not a spec'\n")
    info = tmp_path / "bad_toy-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-toy\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[pytest_speedbench.engines]\nbad = bad_toy\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UsageError, match="entry point 'bad'.*bad_toy.*EngineSpec"):
        engines.registry()


def test_external_engine_runs_a_case(pytester: pytest.Pytester, tiny_tokenizer_dir: Path, prompts_file: Path,
                                     monkeypatch):
    site = install_toy(pytester.mkdir("site"))
    monkeypatch.delitem(sys.modules, "speedbench_toy", raising=False)
    monkeypatch.syspath_prepend(str(site))
    assert isinstance(engines.get_spec("toy"), EngineSpec)
    # a fresh interpreter, as after `pip install`: the entry point is found on its sys.path
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(REPO)]))
    pytester.makepyfile(test_speedbench=SUITE)
    pytester.makefile(".yaml", speedbench=textwrap.dedent("""
        engines:
          toy:
            greeting: hello
    """))
    out = pytester.path / "run.json"
    result = pytester.runpytest_subprocess(
        "--engine=toy", "--drafter=none,ngram", f"--tokenizer={tiny_tokenizer_dir}", f"--dataset={prompts_file}",
        "--num-prompts=2", "--split=qualitative", "--warmup=0", "--output-len=9", f"--speedbench-json={out}",
        "-p", "no:cacheprovider", "-W", "ignore::Warning",
    )
    result.assert_outcomes(passed=2)
    doc = json.loads(out.read_text())
    by_drafter = {b["params"]["drafter"]: b for b in doc["benchmarks"]}
    assert set(by_drafter) == {"none", "ngram"}
    assert by_drafter["ngram"]["extra_info"]["acceptance_length"] == pytest.approx(2.0)
    # the engine-specific option reached the engine
    assert doc["speedbench"]["engines"]["toy-none"]["greeting"] == "hello"


def test_engine_named_with_a_dash_runs_end_to_end(pytester: pytest.Pytester, tiny_tokenizer_dir: Path,
                                                  prompts_file: Path, monkeypatch):
    """`my-engine` through the entry point: the engine key is typed, never split at '-', so each
    (drafter, draft length) gets its own start with the whole name, and the SD cases measure
    against the right twin."""
    site = install_toy(pytester.mkdir("site"), name="my-engine")
    monkeypatch.delitem(sys.modules, "speedbench_toy", raising=False)  # another test's toy
    monkeypatch.syspath_prepend(str(site))
    assert engines.get_spec("my-engine").name == "my-engine"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(REPO)]))
    pytester.makepyfile(test_speedbench=SUITE)
    pytester.makefile(".yaml", speedbench="engines:\n  my-engine:\n    greeting: hi\n")
    out = pytester.path / "run.json"
    result = pytester.runpytest_subprocess(
        "--engine=my-engine", "--drafter=none,ngram", "--draft-length=2,3", f"--tokenizer={tiny_tokenizer_dir}",
        f"--dataset={prompts_file}", "--num-prompts=2", "--split=qualitative", "--warmup=0", "--output-len=9",
        f"--speedbench-json={out}", "-p", "no:cacheprovider", "-W", "ignore::Warning",
    )
    result.assert_outcomes(passed=3)
    doc = json.loads(out.read_text())
    started = doc["speedbench"]["engines"]
    assert set(started) == {"my-engine-none", "my-engine-ngram-g2", "my-engine-ngram-g3"}
    assert {k: (v["engine"], v["drafter"], v["draft_length"], v["greeting"]) for k, v in started.items()} == {
        "my-engine-none": ("my-engine", "none", 2, "hi"),  # one twin serves every draft length
        "my-engine-ngram-g2": ("my-engine", "ngram", 2, "hi"),
        "my-engine-ngram-g3": ("my-engine", "ngram", 3, "hi"),
    }
    sd = [b for b in doc["benchmarks"] if b["params"]["drafter"] == "ngram"]
    assert sorted(b["extra_info"]["engine_key"] for b in sd) == ["my-engine-ngram-g2", "my-engine-ngram-g3"]
    for b in sd:
        assert b["params"]["engine"] == "my-engine" and b["extra_info"]["acceptance_length"] == pytest.approx(2.0)
        assert b["extra_info"]["speedup_baseline"] == "my-engine-none-qualitative-bs1-t0"


@pytest.mark.parametrize("name", ["My-Engine", "my engine", "my--engine", "-my", "my-", "2fast", "my,engine", ""])
def test_bad_engine_names_are_refused_at_registration(tmp_path, monkeypatch, name):
    install_toy(tmp_path, name="toy")
    (tmp_path / "speedbench_toy.py").write_text(TOY_MODULE.replace('"NAME"', repr(name)))
    monkeypatch.delitem(sys.modules, "speedbench_toy", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UsageError) as info:
        engines.registry()
    message = str(info.value)
    assert f"engine name {name!r}" in message and "entry point 'toy'" in message and "e.g. my-engine" in message


def test_engine_key_text_keeps_the_whole_engine_name():
    from pytest_speedbench.settings.matrix import EngineKey

    case = expand(["hf"], ["ngram"], ["qualitative"], [], [1], [0.0], draft_lengths=[2, 3]).cases[0]
    assert case.engine_key == EngineKey("hf", "ngram", 2) and str(case.engine_key) == "hf-ngram-g2"
    assert case.twin().engine_key == EngineKey("hf", "none")
    assert str(EngineKey("my-engine", "none")) == "my-engine-none"


def test_installed_checks_follow_the_spec(monkeypatch, tmp_path):
    """A built llama-server counts (not only a launcher env var); hf needs torch and transformers."""
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv("SPEEDBENCH_LLAMA_SERVER", str(binary))
    engines.get_spec("llamacpp").check_installed()
    monkeypatch.setenv("SPEEDBENCH_LLAMA_SERVER", str(tmp_path / "missing"))
    with pytest.raises(EngineNotInstalled):
        engines.get_spec("llamacpp").check_installed()
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(EngineNotInstalled, match="engine hf needs torch and transformers"):
        engines.get_spec("hf").check_installed()
