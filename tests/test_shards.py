"""Shards end to end: N pytest processes, `speedbench merge`, and the gate on the merged run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SUITE

from pytest_speedbench.cli import main

# Stands in for the tokenizer/dataset (not under test here): three prompts for every case.
CONFTEST = '''
from pytest_speedbench.data.schema import WorkItem
from pytest_speedbench.data.workload import WorkloadCache

WorkloadCache.items = lambda self, cfg: [WorkItem(f"p{i}", "coding", ("x",), (1, 2, i)) for i in range(3)]
WorkloadCache.encoder = property(lambda self: None)
'''
#: metrics that depend only on what the engine emitted, not on timing: equal in any run
EXACT = ("acceptance_length", "acceptance_length_pooled", "acceptance_length_per_draft", "al_histogram",
         "conditional_acceptance_rate", "num_requests", "num_output_tokens", "al_source", "speedup_baseline")
CASES = {f"sglang-{d}-qualitative-bs{b}-t0" for d in ("none", "eagle3") for b in (1, 2, 4)}
RULES = "acceptance_length:-3%,speedup_user_tps:-50%"


@pytest.fixture
def shard_suite(request: pytest.FixtureRequest, fake_sglang):
    """Attached fake SGLang servers (steps drawn per prompt, so any run order gives the same
    tokens): 6 cases in 3 start groups (one twin pair per batch size)."""
    none = fake_sglang("--step-ms", "1", "--per-prompt")
    eagle = fake_sglang("--step-ms", "1", "--accept", "0.8,0.5", "--per-prompt")
    pytester: pytest.Pytester = request.getfixturevalue("pytester")
    pytester.makepyfile(test_speedbench=SUITE)
    pytester.makeconftest(CONFTEST)

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess(
            "--engine=sglang", "--drafter=none,eagle3", f"--server-url=none={none.url},eagle3={eagle.url}",
            "--batch-size=1,2,4", "--temperature=0", "--warmup=0", "--output-len=8", "--split=qualitative",
            "--speedbench-autosave=off", "-p", "no:cacheprovider", "-p", "no:xdist", *args,
        )

    return run


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def entries(path: Path) -> dict[str, dict]:
    return {b["param"]: b for b in json.loads(path.read_text())["benchmarks"]}


def test_three_shards_merged_equal_one_unsharded_run(shard_suite, pytester, capsys):
    whole = pytester.path / "whole.json"
    shard_suite(f"--speedbench-json={whole}", "--speedbench-autosave=on",
                "--speedbench-storage=store").assert_outcomes(passed=6)
    # the plan now estimates from that run's durations
    plan = shard_suite("--speedbench-plan", "--speedbench-shard=2/3", "--speedbench-storage=store")
    plan.stdout.fnmatch_lines(["speedbench: plan * for 3 shard(s) (cost model calibrated on 6 case(s) of *store*",
                               "speedbench:   shard 1/3: 2 case(s) in 1 group(s), ~*, saved run: *"])
    shards = []
    for k in (1, 2, 3):
        out = pytester.path / f"shard-{k}.json"
        result = shard_suite(f"--speedbench-shard={k}/3", f"--speedbench-json={out}")
        result.assert_outcomes(passed=2, deselected=4)
        result.stdout.fnmatch_lines([f"speedbench: shard {k}/3 (--speedbench-shard={k}/3): 2 of 6 case(s) in 1 of 3 "
                                     "start group(s)*"])
        assert {e["extra_info"]["shard"] for e in entries(out).values()} == {f"{k}/3"}
        shards.append(out)
    merged = pytester.path / "merged.json"
    code, out, err = cli(capsys, "merge", *map(str, shards), "-o", str(merged))
    assert code == 0, err
    assert "6 case(s) from shard(s) 1, 2, 3 of 3" in out
    a, b = entries(whole), entries(merged)
    assert set(a) == set(b) == CASES
    assert list(b) == list(a)  # matrix order, as one session writes it
    for case in CASES:
        assert set(b[case]["extra_info"]) - set(a[case]["extra_info"]) == {"shard"}, case
        for metric in EXACT:  # the same up to float summation order (requests finish in any order at bs > 1)
            expected = a[case]["extra_info"].get(metric)
            got = b[case]["extra_info"].get(metric)
            assert got == (expected if isinstance(expected, str) or expected is None else pytest.approx(expected)), \
                (case, metric)
        assert b[case]["extra_info"]["duration_s"] > 0
    sd = b["sglang-eagle3-qualitative-bs2-t0"]["extra_info"]
    assert sd["speedup_user_tps"] is not None and sd["acceptance_length"] > 1.2  # twins measured together
    doc = json.loads(merged.read_text())
    assert doc["speedbench"]["shards"]["merged"] == [1, 2, 3] and doc["speedbench"]["shards"]["missing"] == []
    # compare, report and export read the merged run like any other
    code, out, _ = cli(capsys, "compare", str(whole), str(merged), "--fail", RULES)
    assert code == 0, out
    assert cli(capsys, "export", str(merged), "--csv", str(pytester.path / "m.csv"))[0] == 0
    assert len((pytester.path / "m.csv").read_text().splitlines()) == 7


def test_a_missing_shard_fails_the_merge_and_the_merged_gate_naming_it(shard_suite, pytester, capsys):
    shards = []
    for k in (1, 3):
        out = pytester.path / f"shard-{k}.json"
        shard_suite(f"--speedbench-shard={k}/3", f"--speedbench-json={out}").assert_outcomes(passed=2, deselected=4)
        shards.append(str(out))
    plan = json.loads(Path(shards[0]).read_text())["speedbench"]["shard"]["plan"]
    code, _, err = cli(capsys, "merge", *shards, "-o", str(pytester.path / "m.json"))
    assert code == 1
    assert "shard 2/3 missing" in err and all(case in err for case in plan["2"])
    assert not (pytester.path / "m.json").exists()
    merged = pytester.path / "partial.json"
    code, _, err = cli(capsys, "merge", *shards, "-o", str(merged), "--allow-missing")
    assert code == 0 and "shard 2/3 missing" in err
    baseline = pytester.path / "base.json"
    doc = json.loads(merged.read_text())
    base = dict(doc, benchmarks=doc["benchmarks"] + [dict(doc["benchmarks"][0], param=c, fullname=c,
                                                        params=_params(c)) for c in plan["2"]])
    baseline.write_text(json.dumps(base))
    code, out, err = cli(capsys, "compare", str(baseline), str(merged), "--fail", RULES)
    assert code == 3  # the gate is incomplete (compare's documented exit code), not a regression
    assert "INCOMPLETE: partial: shard 2/3 missing: 2 case(s) not measured" in out
    assert "partial is interrupted: shard 2/3 missing" in out


def _params(case_id: str) -> dict:
    engine, drafter, split, bs, t = case_id.split("-")
    return {"engine": engine, "drafter": drafter, "split": split, "bucket": None, "batch_size": int(bs[2:]),
            "temperature": float(t[1:])}


def test_more_shards_than_groups_leaves_an_empty_shard_that_passes_and_merges(shard_suite, pytester):
    from pytest_speedbench.results.merge import merge_shards

    out = pytester.path / "s4.json"
    result = shard_suite("--speedbench-shard=4/4", f"--speedbench-json={out}")  # 3 groups: shards 1-3 take one each
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["speedbench: shard 4/4 has no case: the matrix has 3 start group(s) for 4 shards*"])
    doc = json.loads(out.read_text())
    assert doc["benchmarks"] == [] and doc["speedbench"]["shard"]["plan"]["4"] == []
    others = [(f"s{k}.json", {**doc, "speedbench": {**doc["speedbench"],
                                                     "shard": {**doc["speedbench"]["shard"], "index": k}}})
              for k in (1, 2, 3)]
    merged = merge_shards([*others, (str(out), doc)])
    assert merged.document["speedbench"]["shards"]["merged"] == [1, 2, 3, 4]
    assert merged.document["speedbench"]["shards"]["missing"] == []


def test_merge_refuses_a_duplicate_shard_and_shards_of_another_plan(shard_suite, pytester, capsys):
    a, b = pytester.path / "a.json", pytester.path / "b.json"
    shard_suite("--speedbench-shard=1/3", f"--speedbench-json={a}").assert_outcomes(passed=2, deselected=4)
    b.write_text(a.read_text())
    code, _, err = cli(capsys, "merge", str(a), str(b), "-o", str(pytester.path / "m.json"))
    assert code == 1 and "shard 1/3 given twice" in err
    other = json.loads(a.read_text())
    other["speedbench"]["shard"].update(index=2, fingerprint="0" * 12)
    b.write_text(json.dumps(other))
    code, _, err = cli(capsys, "merge", str(a), str(b), "-o", str(pytester.path / "m.json"))
    assert code == 1 and "differ in plan" in err
    other = json.loads(a.read_text())
    other["speedbench"]["shard"]["index"] = 2
    other["speedbench"]["config"]["output_len"] = 16
    b.write_text(json.dumps(other))
    code, _, err = cli(capsys, "merge", str(a), str(b), "-o", str(pytester.path / "m.json"))
    assert code == 1 and "output_len: 8 vs 16" in err


def test_plan_shows_every_shard_and_measures_nothing(shard_suite):
    result = shard_suite("--speedbench-plan", "--speedbench-shard=1/2")
    assert result.ret == 0
    # batch size 1 serves its prompts one at a time: its pair costs more than the other two together
    result.stdout.fnmatch_lines(["speedbench: plan * for 2 shard(s) (cost model, uncalibrated*",
                                 "speedbench:   shard 1/2: 2 case(s) in 1 group(s), ~*: sglang-none-qualitative-bs1-t0, "
                                 "sglang-eagle3-qualitative-bs1-t0",
                                 "speedbench:   shard 2/2: 4 case(s) in 2 group(s), ~*"])
    assert "passed" not in result.stdout.str()
    choice = shard_suite("--speedbench-plan")
    choice.stdout.fnmatch_lines(["speedbench: 6 case(s), 3 twin pair group(s); longest shard per shard count*",
                                 "speedbench:   N=1: ~*", "speedbench:   N=3: ~* 3 group(s): twin pairs)"])
    assert "N=4" not in choice.stdout.str()


def test_bad_shard_values_are_usage_errors(shard_suite):
    result = shard_suite("--speedbench-shard=4/3")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*shard 4 is outside 1..3*"])
    result = shard_suite("--speedbench-shard=auto")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*no scheduler variables found*"])


def _shard_doc(k: int, plan: dict, status: str = "complete", keyword: str | None = None) -> dict:
    cases = [c for v in plan.values() for c in v]
    mine = plan[str(k)]
    return {"commit_info": {"id": "abc", "dirty": k == 2}, "datetime": f"2026-12-0{k}T00:00:00",
            "machine_info": {"node": f"host{k}"}, "version": "0",
            "benchmarks": [{"param": c, "fullname": c, "extra_info": {"acceptance_length": 2.0}} for c in mine
                           if c != "c3-bs1"],
            "speedbench": {"config": {"output_len": 8, "shard": f"{k}/3"}, "engines": {f"e{k}": {}},
                           "shard": {"index": k, "count": 3, "plan": plan, "fingerprint": "f", "matrix": cases},
                           "run": {"status": status, "reason": "" if status == "complete" else "x errored",
                                   "selection": {"keyword": keyword, "selected": [c for c in mine if c != "c3-bs1"],
                                                 "deselected": [c for c in cases if c not in mine or c == "c3-bs1"]}}}}


def test_merged_run_status_and_selection_keep_a_missing_shard_missing():
    from pytest_speedbench.results.merge import merge_shards

    plan = {"1": ["c1-bs1", "c1-bs2"], "2": ["c2-bs1"], "3": ["c3-bs1", "c3-bs2"]}
    docs = [(f"s{k}.json", _shard_doc(k, plan, keyword="bs" if k == 3 else None)) for k in (1, 3)]
    merged = merge_shards(docs, allow_missing=True).document
    run = merged["speedbench"]["run"]
    assert run["status"] == "interrupted" and run["reason"] == "shard 2/3 missing"
    # c3-bs1: deselected by its own shard (-k); c2-bs1: its shard never reported, so not "left out"
    assert run["selection"]["deselected"] == ["c3-bs1"]
    assert run["selection"]["selected"] == ["c1-bs1", "c1-bs2", "c3-bs2"]
    assert [b["param"] for b in merged["benchmarks"]] == ["c1-bs1", "c1-bs2", "c3-bs2"]
    assert merged["speedbench"]["shards"]["missing_cases"] == {"2": ["c2-bs1"]}
    assert set(merged["speedbench"]["engines"]) == {"e1", "e3"}
    docs = [(f"s{k}.json", _shard_doc(k, plan, status="failed" if k == 2 else "complete")) for k in (1, 2, 3)]
    merged = merge_shards(docs).document
    assert merged["speedbench"]["run"]["status"] == "failed"
    assert merged["speedbench"]["run"]["reason"] == "shard 2/3: x errored"
    assert merged["commit_info"]["dirty"] is True
    assert "shard" not in merged["speedbench"]


def test_auto_grouping_keeps_engines_whole_only_when_that_fills_every_shard():
    from dataclasses import replace
    from types import SimpleNamespace

    from pytest_speedbench.settings.matrix import expand
    from pytest_speedbench.settings.options import default_settings
    from pytest_speedbench.shards import grouping

    matrix = expand(["hf", "llamacpp"], ["none", "ngram"], ["qualitative"], [], [1, 4], [0.0])
    key = lambda c: f"{c.engine}-{c.drafter}"  # noqa: E731
    session = lambda by: SimpleNamespace(settings=replace(default_settings(), shard_by=by),  # noqa: E731
                                         matrix=matrix, engine_key=key)
    assert [grouping(session("auto"), n)[0] for n in (1, 2, 3)] == ["engine", "engine", "pair"]
    assert len(grouping(session("auto"), 3)[1]) == 4
    assert grouping(session("engine"), 3)[0] == "engine" and len(grouping(session("engine"), 3)[1]) == 2
    assert grouping(session("pair"), 1)[0] == "pair"
    attached = SimpleNamespace(settings=replace(default_settings(), server_url="http://x:1", shard_by="engine"),
                               matrix=matrix, engine_key=key)
    assert grouping(attached, 1)[0] == "pair"  # attached servers start nothing: pairs always
