"""Interleaved rounds: speedup and its interval over rounds and prompts, round agreement,
plausibility against the AL, and gates that report an unstable case instead of a regression."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pytest_speedbench.measure.records import RequestRecord, RunRecords
from pytest_speedbench.metrics import rounds as R
from pytest_speedbench.results import gates


def _run(tps_by_prompt: dict[str, float], tokens: int = 20) -> RunRecords:
    """One request per prompt whose decode phase runs at the given user TPS."""
    requests = []
    for pid, tps in tps_by_prompt.items():
        times = [0.1 + i * (1.0 / tps) for i in range(tokens + 1)]
        requests.append(RequestRecord(pid, "qa", chunk_times=times, chunk_tokens=[1] * (tokens + 1)))
    return RunRecords(requests)


def test_paired_user_tps_keeps_prompts_measured_everywhere():
    sd = [_run({"a": 20, "b": 30, "c": 40}), _run({"a": 22, "b": 33})]
    ar = [_run({"a": 10, "b": 10, "c": 10}), _run({"a": 11, "b": 11, "c": 11})]
    s, a, keys = R.paired_user_tps(sd, ar)
    assert keys == [("a", 0), ("b", 0)]
    assert s.shape == a.shape == (2, 2)
    assert s[1, 1] == pytest.approx(33) and a[0, 0] == pytest.approx(10)


def test_drift_cancels_when_sides_alternate():
    """The machine slows by 40% between round 1 and 2; AR and SD slow alike, the per-round
    speedups agree, the interval is tight around the true 2x and the case is stable."""
    rng = np.random.default_rng(0)
    base = rng.uniform(8, 12, size=6)
    slow = np.array([[1.0], [0.6]])
    noise = lambda: rng.normal(1, 0.01, size=(2, 6))  # noqa: E731
    ar = base * slow * noise()
    sd = 2.0 * base * slow * noise()
    assert R.round_speedups(sd, ar) == pytest.approx([2.0, 2.0], rel=0.02)
    lo, hi = R.paired_rounds_ci(sd, ar)
    assert lo < R.ratio_of_means(sd, ar) < hi and hi - lo < 0.1 and lo < 2.0 < hi
    st = R.assess_stability({"speedup_user_tps": R.ratio_of_means(sd, ar)}, 2.3, [2.2, 2.4], sd, ar)
    assert st["verdict"] == "stable" and st["reasons"] == []


def test_rounds_that_disagree_mark_the_case_unstable():
    """SD ran during a load spike in round 2 only: the drift did not hit both sides."""
    rng = np.random.default_rng(1)
    base = rng.uniform(8, 12, size=6)
    ar = base * rng.normal(1, 0.01, size=(2, 6))
    sd = 2.0 * base * np.array([[1.0], [0.5]]) * rng.normal(1, 0.01, size=(2, 6))
    effect = R.round_effect(sd, ar)
    assert effect["p"] < R.ROUNDS_ALPHA
    st = R.assess_stability({"speedup_user_tps": R.ratio_of_means(sd, ar)}, 2.3, None, sd, ar)
    assert st["verdict"] == "unstable" and "rounds disagree beyond their spread" in st["reasons"][0]
    lo, hi = R.paired_rounds_ci(sd, ar)
    assert lo < 1.1 and hi > 1.9  # the interval covers both rounds, not one


def test_rounds_that_differ_significantly_but_slightly_stay_stable():
    """Steady prompts make a 3% round difference significant (as on the hf demo: 1.80 vs 1.74);
    below the default speedup rule's 5% it cannot move a verdict, so the case stays stable. The
    same F test at 12% apart marks it unstable."""
    rng = np.random.default_rng(2)
    base = rng.uniform(8, 12, size=4)
    ar = base * rng.normal(1, 0.002, size=(2, 4))
    for apart, verdict in ((0.03, "stable"), (0.12, "unstable")):
        sd = 1.8 * base * np.array([[1.0], [1.0 - apart]]) * rng.normal(1, 0.002, size=(2, 4))
        assert R.round_effect(sd, ar)["p"] < R.ROUNDS_ALPHA
        st = R.assess_stability({"speedup_user_tps": R.ratio_of_means(sd, ar)}, 2.16, [1.73, 2.61], sd, ar)
        assert st["verdict"] == verdict, (apart, st["reasons"])


def test_rounds_far_apart_are_unstable_even_when_the_test_has_no_power():
    """A loaded machine, 2 rounds x 4 prompts: the per-prompt noise is so large that the F test
    finds nothing (p > 0.01), yet rounds of 1.61 and 0.23 cannot both describe this commit."""
    ar = np.array([[10.0, 12.0, 9.0, 11.0], [10.0, 12.0, 9.0, 11.0]])
    sd = ar * np.array([[1.0, 3.0, 0.9, 1.8], [0.5, 0.1, 0.4, 0.2]])
    effect = R.round_effect(sd, ar)
    assert effect["p"] > R.ROUNDS_ALPHA
    st = R.assess_stability({"speedup_user_tps": R.ratio_of_means(sd, ar)}, 2.16, [1.73, 2.61], sd, ar)
    assert st["verdict"] == "unstable"
    assert st["reasons"][0].startswith("rounds disagree: user-TPS speedup per round")
    assert "the machine was not steady" in st["reasons"][0]


def test_implausible_speedup_for_the_al():
    reasons = R.implausible_speedups({"speedup_user_tps": 16.64, "speedup_output_tps": 2.0,
                                      "speedup_analytical": None}, 2.16, [2.1, 2.2])
    assert len(reasons) == 1 and reasons[0].startswith("speedup_user_tps 16.64 exceeds what AL 2.16 allows")
    assert R.implausible_speedups({"speedup_user_tps": 2.5}, 2.16, [2.1, 2.2]) == []  # inside the margin


def test_round_effect_needs_two_rounds_and_two_prompts():
    assert R.round_effect(np.ones((1, 5)), np.ones((1, 5))) is None
    assert R.round_effect(np.ones((3, 1)), np.ones((3, 1))) is None


@pytest.mark.parametrize("f,d1,d2,p", [(10.128, 1, 3, 0.05), (34.116, 1, 3, 0.01), (4.103, 2, 10, 0.05),
                                       (1.0, 5, 5, 0.5), (2.866, 4, 20, 0.05)])
def test_f_survival_matches_tables(f, d1, d2, p):
    assert R.f_survival(f, d1, d2) == pytest.approx(p, rel=2e-3)
    assert R.f_survival(0.0, d1, d2) == 1.0 and R.f_survival(math.inf, d1, d2) == 0.0


def test_merge_rounds_sums_run_counters():
    a, b = _run({"a": 10}), _run({"a": 11})
    a.engine_counters = {"steps": 10, "accepted": 5, "accepted_per_pos": [3, 2]}
    b.engine_counters = {"steps": 12, "accepted": 7, "accepted_per_pos": [4, 2, 1]}
    merged = R.merge_rounds([a, b])
    assert len(merged.requests) == 2 and merged.client_info["rounds"] == 2
    assert merged.engine_counters == {"steps": 22, "accepted": 12, "accepted_per_pos": [7, 4, 1]}


UNSTABLE = {"verdict": "unstable", "reasons": ["rounds disagree beyond their spread: ..."]}


@pytest.mark.parametrize("where", ["current", "baseline"])
def test_gate_on_an_unstable_case_reports_it_instead_of_a_regression(where):
    base = {"acceptance_length": 2.0, "acceptance_length_ci95": [1.9, 2.1], "speedup_user_tps": 2.0,
            "speedup_user_tps_ci95": [1.9, 2.1]}
    cur = {"acceptance_length": 2.0, "acceptance_length_ci95": [1.9, 2.1], "speedup_user_tps": 1.2,
           "speedup_user_tps_ci95": [1.1, 1.3]}
    rules = gates.parse_fail_rules("acceptance_length:-3%,speedup_user_tps:-5%")
    assert gates.evaluate({}, cur, rules=rules, baseline_extra_info=base).verdict == "fail"
    if where == "current":
        cur = {**cur, "stability": UNSTABLE}
    else:
        base = {**base, "stability": UNSTABLE}
    verdict = gates.evaluate({}, cur, rules=rules, baseline_extra_info=base)
    assert verdict.verdict == "unstable"
    (speedup,) = [c for c in verdict.checks if c.metric == "speedup_user_tps"]
    assert speedup.outcome == "unstable" and "not judged as a regression: case unstable" in speedup.message
    # an AL regression on an unstable case still fails: drift does not move the AL
    worse = {**cur, "acceptance_length": 1.5, "acceptance_length_ci95": [1.4, 1.6]}
    assert gates.evaluate({}, worse, rules=rules, baseline_extra_info=base).verdict == "fail"


def test_summary_table_names_unstable_cases_and_why():
    from pytest_speedbench.results.table import render

    stable = {"param": "hf-ngram-qualitative-bs1-t0", "extra_info": {"stability": {"verdict": "stable"},
                                                                      "gate": {"verdict": "pass"}}}
    shaky = {"param": "hf-draft-qualitative-bs1-t0",
             "extra_info": {"stability": {"verdict": "unstable", "reasons": ["speedup_user_tps 16.64 exceeds ..."]},
                            "gate": {"verdict": "skip"}}}
    lines = render([stable, shaky])
    rows = {line.split()[0]: line for line in lines[2:4]}
    assert rows["hf-draft-qualitative-bs1-t0"].endswith("skip (unstable)")
    assert rows["hf-ngram-qualitative-bs1-t0"].endswith("pass")
    i = lines.index("unstable (speedups not trusted, not judged as regressions):")
    assert lines[i + 1] == "  hf-draft-qualitative-bs1-t0: speedup_user_tps 16.64 exceeds ..."
