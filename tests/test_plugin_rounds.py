"""Interleaved rounds end to end: the SD case measures its AR twin and itself in turns over the
same prompts, records the rounds, and puts the AR rounds' figures on the twin's entry."""

from __future__ import annotations

import json
import pytest
from conftest import SUITE

from pytest_speedbench.metrics import catalogue

SD = "sglang-eagle3-qualitative-bs1-t0"
AR = "sglang-none-qualitative-bs1-t0"


def _truth(server, side: str) -> list[tuple[float, str]]:
    return [(row["t_done"], side) for row in server.truth()]


@pytest.mark.parametrize("rounds", [1, 3])
def test_sd_case_alternates_with_its_twin(rounds, pytester, fake_sglang, tiny_tokenizer_dir, prompts_file):
    ar_server, sd_server = fake_sglang("--algorithm", "NONE", "--step-ms", "2"), fake_sglang("--step-ms", "3")
    pytester.makepyfile(test_speedbench=SUITE)
    out = pytester.path / "out.json"
    result = pytester.runpytest(
        "--engine=sglang", "--drafter=none,eagle3", f"--server-url=none={ar_server.url},eagle3={sd_server.url}",
        f"--tokenizer={tiny_tokenizer_dir}", f"--dataset={prompts_file}", "--num-prompts=2", "--split=qualitative",
        "--temperature=0", "--warmup=0", "--output-len=16", f"--speedbench-rounds={rounds}",
        f"--speedbench-json={out}", "-p", "no:cacheprovider", "-W", "ignore::Warning",
    )
    result.assert_outcomes(passed=2)
    entries = {b["param"]: b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]}
    per_run = entries[AR]["num_requests"]  # the twin's own case: one pass over the prompts
    sd = entries[SD]
    assert sd["num_requests"] == rounds * per_run
    assert sd["client"]["rounds"] == rounds
    assert sd["speedup_baseline"] == AR and sd["speedup_method"].startswith(f"interleaved: {rounds} round(s)")
    assert len(sd["stability"]["round_speedups_user_tps"]) == rounds
    assert sd["stability"]["verdict"] in ("stable", "unstable")
    lo, hi = sd["speedup_user_tps_ci95"]
    assert lo <= sd["speedup_user_tps"] <= hi
    assert len(sd["speedup_output_tps_rounds"]) == rounds
    for extra in entries.values():  # the results schema is the catalogue: every key has a row
        assert catalogue.undeclared(extra) == []
    twin = entries[AR]["interleaved_rounds"][SD]
    assert len(twin["user_tps_mean_rounds"]) == rounds and len(twin["output_tps_rounds"]) == rounds
    # the servers saw the twin's own pass, then AR, SD, AR, SD, ... blocks of one pass each
    events = sorted(_truth(ar_server, "AR") + _truth(sd_server, "SD"))
    sides = [side for _, side in events][per_run:]
    blocks = [sides[i:i + per_run] for i in range(0, len(sides), per_run)]
    assert blocks == [[s] * per_run for _ in range(rounds) for s in ("AR", "SD")]
