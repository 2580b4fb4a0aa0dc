"""xdist: engine configurations grouped per worker, workers pinned to GPUs, one results file."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import SUITE

from pytest_speedbench.errors import UsageError
from pytest_speedbench.settings.matrix import expand
from pytest_speedbench.engines import parallel_args
from pytest_speedbench.engines.spec import gpus_needed, parallel_settings
from pytest_speedbench.xdist import gpu_list, scope_map, scope_of, worker_gpus


# Stands in for the tokenizer/dataset (not under test here) and logs every engine start with
# the CUDA_VISIBLE_DEVICES that a launched engine process would inherit.
CONFTEST = '''
import json, os
from pytest_speedbench.data.schema import WorkItem
from pytest_speedbench.engines.sglang import SGLangEngine
from pytest_speedbench.data.workload import WorkloadCache

WorkloadCache.items = lambda self, cfg: [WorkItem(f"p{i}", "coding", ("x",), (1, 2, i)) for i in range(3)]
WorkloadCache.encoder = property(lambda self: None)
_start = SGLangEngine.start

def start(self):
    with open(os.environ["STARTS_LOG"], "a") as f:
        f.write(json.dumps({"key": self.config.key, "worker": os.environ.get("PYTEST_XDIST_WORKER"),
                            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                            "engine_args": list(self.config.engine_args)}) + "\\n")
    _start(self)

SGLangEngine.start = start
'''


@pytest.fixture
def xsuite(request: pytest.FixtureRequest, fake_sglang, monkeypatch: pytest.MonkeyPatch):
    # servers first: pytester forgets modules imported after it starts, httpx's lazy ones included
    none, eagle = fake_sglang("--step-ms", "1"), fake_sglang("--step-ms", "1", "--accept", "0.8,0.5")
    pytester: pytest.Pytester = request.getfixturevalue("pytester")
    pytester.makepyfile(test_speedbench=SUITE)
    pytester.makeconftest(CONFTEST)
    log = pytester.path / "starts.jsonl"
    monkeypatch.setenv("STARTS_LOG", str(log))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def run(*args: str) -> tuple[pytest.RunResult, list[dict]]:
        result = pytester.runpytest_subprocess(
            "--engine=sglang", "--drafter=none,eagle3", f"--server-url=none={none.url},eagle3={eagle.url}",
            "--batch-size=1,2", "--temperature=0", "--warmup=0", "--output-len=8", "--split=qualitative",
            "-p", "no:cacheprovider", *args,
        )
        starts = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return result, starts

    return run


def test_two_workers_start_each_configuration_once_and_write_one_file(xsuite, pytester, monkeypatch):
    monkeypatch.setenv("SPEEDBENCH_XDIST_GROUP", "config")
    out = pytester.path / "out.json"
    result, starts = xsuite("-n", "2", "--speedbench-gpus=3,5", f"--speedbench-json={out}",
                            "--speedbench-autosave", "--speedbench-storage=store")
    result.assert_outcomes(passed=4)
    assert Counter(s["key"] for s in starts) == {"sglang-none": 1, "sglang-eagle3": 1}
    by_key = {s["key"]: s for s in starts}
    assert {s["worker"] for s in starts} == {"gw0", "gw1"}
    assert {by_key[k]["cuda"] for k in by_key} == {"3", "5"}
    for s in starts:
        assert s["cuda"] == {"gw0": "3", "gw1": "5"}[s["worker"]]
    doc = json.loads(out.read_text())
    entries = {b["param"]: b for b in doc["benchmarks"]}
    assert len(entries) == 4
    placement = {p: e["extra_info"]["placement"] for p, e in entries.items()}
    for param, where in placement.items():
        assert where["cuda_visible_devices"] == by_key["-".join(param.split("-")[:2])]["cuda"]
    saved = list((pytester.path / "store").rglob("*.json"))
    assert len(saved) == 1, saved
    assert len(json.loads(saved[0].read_text())["benchmarks"]) == 4


def test_engine_grouping_keeps_twins_together_for_speedups(xsuite, pytester):
    out = pytester.path / "out.json"
    result, starts = xsuite("-n", "2", f"--speedbench-json={out}")
    result.assert_outcomes(passed=4)
    assert Counter(s["key"] for s in starts) == {"sglang-none": 1, "sglang-eagle3": 1}
    assert len({s["worker"] for s in starts}) == 1
    entries = {b["param"]: b for b in json.loads(out.read_text())["benchmarks"]}
    assert entries["sglang-eagle3-qualitative-bs2-t0"]["extra_info"]["speedup_user_tps"] is not None


def test_setup_plan_starts_each_engine_once_without_xdist(xsuite):
    result, _ = xsuite("-p", "no:xdist", "--setup-plan")
    setups = [line for line in result.outlines if "SETUP    S speedbench_engine" in line]
    assert len(setups) == 2, result.outlines


def test_case_needing_more_gpus_than_its_worker_is_skipped(xsuite, pytester, monkeypatch):
    monkeypatch.setenv("SPEEDBENCH_SGLANG_CMD", "false")  # "installed"; never launched: skipped first
    pytester.path.joinpath("speedbench.yaml").write_text("engines:\n  sglang:\n    tensor_parallel: 2\n")
    # attached servers need no local GPUs, so empty --server-url: the launch path is checked,
    # and the skip comes before any engine start
    result, starts = xsuite("-n", "2", "--speedbench-gpus=0,1", "-rs", "--server-url=")
    assert starts == []
    result.assert_outcomes(skipped=4)
    result.stdout.fnmatch_lines(["*sglang needs 2 GPU(s) (tensor_parallel=2) but gw* has 1 (*)*"])


def test_parallel_settings_become_each_engines_flags():
    assert parallel_args("sglang", {"tp": 2, "pipeline_parallel": 2, "nnodes": 2, "node_rank": 1,
                                    "dist_init_addr": "10.0.0.1:5000"}) == (
        "--tp-size", "2", "--pp-size", "2", "--nnodes", "2", "--node-rank", "1", "--dist-init-addr", "10.0.0.1:5000")
    assert parallel_args("vllm", {"tensor_parallel_size": 4}) == ("--tensor-parallel-size", "4")
    assert parallel_args("trtllm", {"tensor_parallel": 2, "pp": 1}) == ("--tp_size", "2")
    assert parallel_args("llamacpp", {"tensor_parallel": 2}) == ()
    with pytest.raises(UsageError, match="llamacpp cannot be launched with pipeline_parallel=2"):
        parallel_args("llamacpp", {"pipeline_parallel": 2})
    assert gpus_needed(parallel_settings({"tp": 2, "pp": 2, "model": "m"})) == 4


def test_gpu_lists_and_worker_slices():
    assert gpu_list("0,1,2,3", {}) == ["0", "1", "2", "3"]
    assert gpu_list(None, {"CUDA_VISIBLE_DEVICES": "4,6"}) == ["4", "6"]
    assert gpu_list(None, {"CUDA_VISIBLE_DEVICES": ""}) == []
    with pytest.raises(UsageError, match="GPU.s. 7 are outside CUDA_VISIBLE_DEVICES=4,6"):
        gpu_list("4,7", {"CUDA_VISIBLE_DEVICES": "4,6"})
    gpus = ["0", "1", "2", "3"]
    assert [worker_gpus(gpus, 2, i) for i in range(2)] == [["0", "1"], ["2", "3"]]
    assert [worker_gpus(gpus, 4, i) for i in range(4)] == [["0"], ["1"], ["2"], ["3"]]
    assert [worker_gpus(gpus[:2], 3, i) for i in range(3)] == [["0"], ["1"], ["0"]]


def test_scopes_follow_engine_or_configuration():
    cases = expand(["sglang", "vllm"], ["none", "eagle3"], ["qualitative"], [], [1, 16], [0.0], {}).cases
    engine_scopes, config_scopes = scope_map(cases, "engine"), scope_map(cases, "config")
    nodeid = "bench/test_x.py::test_sd[vllm-eagle3-qualitative-bs16-t0]"
    assert scope_of(nodeid, engine_scopes) == "speedbench:vllm"
    assert scope_of(nodeid, config_scopes) == "speedbench:vllm-eagle3"
    # bs1 must not be mistaken for bs16 and vice versa; unrelated tests keep their own scope
    assert scope_of("t.py::test_sd[sglang-none-qualitative-bs1-t0-extra]", config_scopes) == "speedbench:sglang-none"
    assert scope_of("t.py::test_other", engine_scopes) == "t.py::test_other"


def test_parallel_flags_reach_the_launched_engine_config(tmp_path):
    from pytest_speedbench.settings.options import build_settings
    from pytest_speedbench.session import SpeedbenchSession
    from pytest_speedbench.settings.matrix import EngineKey

    yaml = tmp_path / "speedbench.yaml"
    yaml.write_text("engines:\n  sglang:\n    tensor_parallel: 2\n    engine_args: --mem-fraction-static 0.8\n")
    settings = build_settings({"engine": "sglang", "drafter": "none"}, {}, yaml)
    config = SpeedbenchSession(settings, tmp_path).pool.config(EngineKey("sglang", "none"))
    assert config.engine_args == ("--tp-size", "2", "--mem-fraction-static", "0.8")
