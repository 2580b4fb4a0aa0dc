"""The results document's parts come from the plugin's own firstresult hooks, so a conftest can
replace machine info, commit info or the whole document (as with pytest-benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SUITE

CONFTEST = '''
import pytest

def pytest_speedbench_machine_info(config):
    return {"node": "lab-node-7", "gpus": []}

def pytest_speedbench_commit_info(config):
    return {"id": "c0ffee", "dirty": False, "branch": "nightly", "project": "x", "time": None, "author_time": None}

@pytest.hookimpl(tryfirst=True)
def pytest_speedbench_results_document(config, entries, section, machine_info, commit_info):
    if config.getoption("speedbench_json", "").endswith("own.json"):
        return {"mine": True, "cases": [e["param"] for e in entries], "node": machine_info["node"]}
    return None  # fall through to the plugin's document
'''


@pytest.mark.parametrize("target, own", [("run.json", False), ("own.json", True)])
def test_conftest_replaces_machine_commit_and_document(pytester: pytest.Pytester, tiny_tokenizer_dir: Path,
                                                       prompts_file: Path, fake_sglang, target, own):
    pytester.makepyfile(test_speedbench=SUITE)
    pytester.makeconftest(CONFTEST)
    ar = fake_sglang("--algorithm", "NONE", "--step-ms", "2")
    out = pytester.path / target
    result = pytester.runpytest_subprocess(
        "--engine=sglang", "--drafter=none", f"--server-url={ar.url}", f"--tokenizer={tiny_tokenizer_dir}",
        f"--dataset={prompts_file}", "--num-prompts=1", "--split=qualitative", "--warmup=0", "--output-len=8",
        f"--speedbench-json={out}", "-p", "no:cacheprovider", "-W", "ignore::Warning",
    )
    result.assert_outcomes(passed=1)
    doc = json.loads(out.read_text())
    if own:
        assert doc == {"mine": True, "cases": ["sglang-none-qualitative-bs1-t0"], "node": "lab-node-7"}
    else:
        assert doc["machine_info"] == {"node": "lab-node-7", "gpus": []}
        assert doc["commit_info"]["id"] == "c0ffee" and doc["commit_info"]["branch"] == "nightly"
        assert [b["param"] for b in doc["benchmarks"]] == ["sglang-none-qualitative-bs1-t0"]
