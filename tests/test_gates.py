"""Gates: rule parsing, threshold matching, noise-aware baseline comparison, JUnit properties."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from pytest_speedbench.results import gates
from pytest_speedbench.errors import UsageError

RESULTS = Path(__file__).resolve().parent.parent / "fixtures" / "results"

PARAMS = {"engine": "sglang", "drafter": "eagle3", "split": "qualitative", "bucket": None,
          "batch_size": 1, "temperature": 0.0}


def info(al: float = 2.41, ci: tuple[float, float] = (2.30, 2.52), **extra: object) -> dict:
    base = {
        "acceptance_length": al,
        "acceptance_length_ci95": list(ci),
        "acceptance_length_by_category": {"coding": 2.9, "math": 2.6, "writing": 1.9},
        "ttft_s": {"mean": 0.05, "std": 0.01, "p50": 0.048, "p90": 0.06, "p99": 0.08},
        "user_tps": {"mean": 120.0, "std": 10.0, "p50": 119.0, "p90": 130.0, "p99": 140.0},
        "output_tps": 120.0,
        "num_requests": 100,
        "speedup_user_tps": 1.8,
        "speedup_user_tps_ci95": [1.7, 1.9],
    }
    base.update(extra)
    return base


# ------------------------------------------------------------------------------ rule parsing


@pytest.mark.parametrize(
    "text, metric, direction, amount, relative",
    [
        ("acceptance_length:-3%", "acceptance_length", -1, 3.0, True),
        ("ttft_s.p99:+10%", "ttft_s.p99", +1, 10.0, True),
        ("acceptance_length:-0.1", "acceptance_length", -1, 0.1, False),
        ("tpot_s.mean:+0.002", "tpot_s.mean", +1, 0.002, False),
        ("output_tps:+2.5%", "output_tps", +1, 2.5, True),
        ("acceptance_length_by_category.coding:-5%", "acceptance_length_by_category.coding", -1, 5.0, True),
        # no sign: the metric's regression direction
        ("ttft_s.p99:10%", "ttft_s.p99", +1, 10.0, True),
        ("speedup_user_tps:5%", "speedup_user_tps", -1, 5.0, True),
    ],
)
def test_parse_single_rule(text, metric, direction, amount, relative):
    (rule,) = gates.parse_fail_rules(text)
    assert (rule.metric, rule.direction, rule.amount, rule.relative) == (metric, direction, amount, relative)


def test_parse_rule_list_and_round_trip_text():
    rules = gates.parse_fail_rules("acceptance_length:-3%, speedup_user_tps:-5%,ttft_s.p99:+10%,")
    assert [r.text for r in rules] == ["acceptance_length:-3%", "speedup_user_tps:-5%", "ttft_s.p99:+10%"]
    assert gates.parse_fail_rules(["acceptance_length:-0.25"])[0].text == "acceptance_length:-0.25"
    assert gates.parse_fail_rules(None) == []


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("acceptence_length:-3%", "unknown metric 'acceptence_length'"),
        ("ttft_s:+10%", "ttft_s is a summary"),
        ("ttft_s.p95:+10%", "unknown metric 'ttft_s.p95'"),
        ("acceptance_length", "is not METRIC:CHANGE"),
        ("acceptance_length:-3x", "has change '-3x'"),
        ("acceptance_length:down", "has change 'down'"),
    ],
)
def test_parse_rule_errors_name_the_rule_and_valid_metrics(text, fragment):
    with pytest.raises(UsageError) as exc:
        gates.parse_fail_rules(text)
    message = str(exc.value)
    assert fragment in message
    assert repr(text.split(",")[0]) in message
    if "unknown metric" in fragment or "summary" in fragment:
        assert "valid metrics: acceptance_length," in message and "ttft_s.p99" in message


def test_rule_exceeded_directions():
    drop, rise = gates.parse_fail_rules("acceptance_length:-3%,ttft_s.p99:+10%")
    assert drop.exceeded(2.0, 1.9) is True  # -5%
    assert drop.exceeded(2.0, 1.95) is False  # -2.5%
    assert drop.exceeded(2.0, 1.94) is False  # exactly -3%: not beyond
    assert drop.exceeded(2.0, 3.0) is False  # an improvement never fails a drop rule
    assert rise.exceeded(0.1, 0.12) is True
    assert rise.exceeded(0.1, 0.05) is False
    assert drop.exceeded(0.0, 1.0) is None
    (absolute,) = gates.parse_fail_rules("acceptance_length:-0.1")
    assert absolute.exceeded(2.0, 1.85) is True and absolute.exceeded(2.0, 1.95) is False


def test_rules_from_settings_prefers_command_line():
    sections = {"fail": "acceptance_length:-3%"}
    assert [r.text for r in gates.rules_from_settings(None, sections)] == ["acceptance_length:-3%"]
    assert [r.text for r in gates.rules_from_settings("output_tps:-5%", sections)] == ["output_tps:-5%"]
    nested = {"gates": {"fail": ["ttft_s.p99:+10%"]}}
    assert [r.text for r in gates.rules_from_settings(None, nested)] == ["ttft_s.p99:+10%"]


# ------------------------------------------------------------------------------ thresholds


def thresholds(*entries: dict) -> list[gates.Threshold]:
    return gates.parse_thresholds({"thresholds": list(entries)})


def test_threshold_subset_match():
    (t,) = thresholds({"match": {"drafter": "eagle3", "batch_size": [1, 4]}, "speedup_user_tps": {"min": 2.0}})
    assert t.matches(PARAMS)
    assert t.matches({**PARAMS, "batch_size": 4, "engine": "vllm"})
    assert not t.matches({**PARAMS, "batch_size": 16})
    assert not t.matches({**PARAMS, "drafter": "ngram"})
    # yaml numbers match results numbers whatever their type; null matches a missing bucket
    (t2,) = thresholds({"match": {"temperature": 0, "bucket": None}, "output_tps": {"min": 1}})
    assert t2.matches(PARAMS) and not t2.matches({**PARAMS, "temperature": 0.7})


def test_threshold_fails_and_passes_as_configured():
    ts = thresholds(
        {"match": {"drafter": "eagle3"}, "speedup_user_tps": {"min": 2.0}},
        {"match": {"engine": "sglang"}, "ttft_s.p99": {"max": 0.1}, "output_tps": {"min": 100}},
    )
    v = gates.evaluate(PARAMS, info(), thresholds=ts)
    assert v.verdict == "fail"
    assert v.reasons == [
        "speedup_user_tps: 1.80 (95% CI [1.70, 1.90]) below minimum 2.00 of thresholds[0] (drafter=eagle3)"
    ]
    assert [c.outcome for c in v.checks] == ["fail", "pass", "pass"]
    assert gates.evaluate({**PARAMS, "drafter": "ngram"}, info(), thresholds=ts).verdict == "pass"
    slow = info(ttft_s={"mean": 0.1, "std": 0.02, "p50": 0.1, "p90": 0.15, "p99": 0.25})
    v2 = gates.evaluate({**PARAMS, "drafter": "ngram"}, slow, thresholds=ts)
    assert v2.verdict == "fail"
    assert v2.reasons == ["ttft_s.p99: 0.25 above maximum 0.1 of thresholds[1] (engine=sglang)"]


def test_category_thresholds_use_per_category_al():
    ts = thresholds(
        {"match": {"drafter": "eagle3", "category": "coding"}, "acceptance_length": {"min": 3.0}},
        {"match": {"category": ["math", "writing"]}, "acceptance_length": {"min": 2.0}},
    )
    v = gates.evaluate(PARAMS, info(), thresholds=ts)
    failed = [c for c in v.checks if c.failed]
    assert [c.metric for c in v.checks] == [
        "acceptance_length_by_category.coding",
        "acceptance_length_by_category.math",
        "acceptance_length_by_category.writing",
    ]
    assert [c.metric for c in failed] == ["acceptance_length_by_category.coding",
                                          "acceptance_length_by_category.writing"]
    assert failed[0].message.startswith("acceptance_length_by_category.coding: 2.90 below minimum 3.00 of "
                                        "thresholds[0] (drafter=eagle3, category=coding)")
    # overall AL (2.41) is not what a category threshold checks
    assert all(c.current != 2.41 for c in v.checks)


def test_category_wildcard_checks_every_category():
    (t,) = thresholds({"match": {"category": "*"}, "acceptance_length": {"min": 2.5}})
    v = gates.evaluate(PARAMS, info(), thresholds=[t])
    assert {c.metric.split(".")[1]: c.outcome for c in v.checks} == {"coding": "pass", "math": "pass",
                                                                      "writing": "fail"}


def test_threshold_on_unmeasured_metric_is_skipped_not_failed():
    (t,) = thresholds({"match": {}, "speedup_user_tps": {"min": 1.3}})
    v = gates.evaluate({**PARAMS, "drafter": "none"}, info(speedup_user_tps=None), thresholds=[t])
    assert v.verdict == "skip"
    assert v.reasons == ["speedup_user_tps: not measured in this run; min 1.30 of thresholds[0] (all cases) not checked"]


@pytest.mark.parametrize(
    "entry, fragment",
    [
        ({"match": {"model": "x"}, "acceptance_length": {"min": 1}}, "unknown match key 'model'; valid keys: engine"),
        ({"match": {}, "acceptance_lenght": {"min": 1}}, "unknown metric 'acceptance_lenght'"),
        ({"match": {}, "acceptance_length": 2.5}, "must be {min: x}, {max: y} or both"),
        ({"match": {}, "acceptance_length": {"minimum": 2}}, "must be {min: x}"),
        ({"match": {}, "acceptance_length": {"min": "high"}}, "acceptance_length.min must be a number"),
        ({"match": {"category": "coding"}, "ttft_s.p99": {"max": 1}}, "has no per-category value"),
        ({"match": {"engine": "sglang"}}, "no metric bounds"),
    ],
)
def test_threshold_errors(entry, fragment):
    with pytest.raises(UsageError, match=r"thresholds\[0\]") as exc:
        gates.parse_thresholds({"thresholds": [entry]})
    assert fragment in str(exc.value)


def test_thresholds_under_gates_section():
    ts = gates.parse_thresholds({"gates": {"thresholds": [{"output_tps": {"min": 1}}]}})
    assert len(ts) == 1 and ts[0].describe() == "thresholds[0] (all cases)"
    assert gates.parse_thresholds({}) == []


# ------------------------------------------------------------------------------ baseline comparison


RULES = "acceptance_length:-3%"


def test_drop_beyond_tolerance_outside_ci_fails_with_precise_message():
    v = gates.evaluate(PARAMS, info(al=2.20, ci=(2.12, 2.29)), rules=gates.parse_fail_rules(RULES),
                       baseline_extra_info=info(al=2.41))
    assert v.verdict == "fail"
    assert v.reasons == [
        "acceptance_length: 2.41 -> 2.20 (-8.7%) breaks rule acceptance_length:-3%; "
        "baseline 2.41 outside current 95% CI [2.12, 2.29]"
    ]
    (check,) = v.checks
    assert (check.baseline, check.current, round(check.change_pct, 1)) == (2.41, 2.20, -8.7)


def test_drop_beyond_tolerance_inside_ci_is_noise_unless_strict():
    current = info(al=2.30, ci=(2.18, 2.45))
    rules = gates.parse_fail_rules(RULES)
    v = gates.evaluate(PARAMS, current, rules=rules, baseline_extra_info=info(al=2.41))
    assert v.verdict == "pass"
    assert v.checks[0].outcome == "noise"
    assert v.reasons == [
        "acceptance_length: 2.41 -> 2.30 (-4.6%) exceeds rule acceptance_length:-3% but baseline 2.41 lies "
        "inside current 95% CI [2.18, 2.45]: within noise"
    ]
    strict = gates.evaluate(PARAMS, current, rules=rules, baseline_extra_info=info(al=2.41), strict=True)
    assert strict.verdict == "fail"
    assert strict.reasons[0].startswith("acceptance_length: 2.41 -> 2.30 (-4.6%) breaks rule acceptance_length:-3%; "
                                        "strict: confidence interval not consulted")


def test_speedup_rules_do_not_apply_to_the_ar_case_but_a_missing_speedup_of_an_sd_case_is_said():
    """The default rules name speedup_user_tps; an AR (drafter=none) case has no speedup by
    definition, so it gets no "not measured" note, while an SD case without one does."""
    rules = gates.parse_fail_rules(gates.DEFAULT_RULES)
    ar = {k: v for k, v in info(al=1.0, ci=(1.0, 1.0)).items() if not k.startswith("speedup_")}
    v = gates.evaluate({**PARAMS, "drafter": "none"}, ar, rules=rules, baseline_extra_info=ar)
    assert v.verdict == "pass" and v.reasons == []
    assert [c.metric for c in v.checks] == ["acceptance_length"]
    sd_missing = {k: v for k, v in info().items() if not k.startswith("speedup_")}
    sd = gates.evaluate(PARAMS, sd_missing, rules=rules, baseline_extra_info=info())
    assert sd.verdict == "fail"  # missing means failed: the baseline measured a speedup, this run did not
    assert [(c.kind, c.metric) for c in sd.checks if c.failed] == [("missing", "speedup_user_tps")]
    assert ("speedup_user_tps: measured in the baseline (1.80) but not in this run; rule speedup_user_tps:-5% "
            "cannot pass (--allow-missing accepts it)") in sd.reasons
    allowed = gates.evaluate(PARAMS, sd_missing, rules=rules, baseline_extra_info=info(), allow_missing=True)
    assert allowed.verdict == "pass"
    assert "speedup_user_tps: not measured in this run; rule speedup_user_tps:-5% not checked" in allowed.reasons


def test_drop_within_tolerance_passes_and_identical_runs_pass():
    rules = gates.parse_fail_rules("acceptance_length:-3%,ttft_s.p99:+10%,output_tps:-5%,speedup_user_tps:-5%")
    v = gates.evaluate(PARAMS, info(al=2.36, ci=(2.37, 2.5)), rules=rules, baseline_extra_info=info(al=2.41))
    assert v.verdict == "pass" and v.reasons == []
    same = gates.evaluate(PARAMS, info(), rules=rules, baseline_extra_info=info(), strict=True)
    assert same.verdict == "pass" and [c.outcome for c in same.checks] == ["pass"] * 4


def test_metric_without_interval_uses_tolerance_alone():
    base = info()
    cur = info(ttft_s={**base["ttft_s"], "p99": 0.1}, output_tps=110.0)
    v = gates.evaluate(PARAMS, cur, rules=gates.parse_fail_rules("ttft_s.p99:+10%,output_tps:-5%"),
                       baseline_extra_info=base)
    assert v.verdict == "fail"
    assert v.reasons == [
        "ttft_s.p99: 0.08 -> 0.1 (+25.0%) breaks rule ttft_s.p99:+10%; no confidence interval for "
        "ttft_s.p99 in this run, tolerance alone decides",
        "output_tps: 120.0 -> 110.0 (-8.3%) breaks rule output_tps:-5%; no confidence interval for "
        "output_tps in this run, tolerance alone decides",
    ]


def test_mean_of_summary_gets_normal_interval():
    base = info()
    # mean 0.05 -> 0.0515 (+3%), std 0.01, n=100: CI half width 0.00196 -> baseline inside -> noise
    cur = info(ttft_s={**base["ttft_s"], "mean": 0.0515})
    (check,) = gates.evaluate(PARAMS, cur, rules=gates.parse_fail_rules("ttft_s.mean:+2%"),
                              baseline_extra_info=base).checks
    assert check.outcome == "noise"
    assert check.interval.label == "95% CI (normal approx.)"
    assert check.interval.lo == pytest.approx(0.0515 - 0.00196)


def test_absolute_rule_message_shows_absolute_change():
    v = gates.evaluate(PARAMS, info(al=2.2, ci=(2.1, 2.3)), rules=gates.parse_fail_rules("acceptance_length:-0.1"),
                       baseline_extra_info=info(al=2.41))
    assert v.reasons[0].startswith("acceptance_length: 2.41 -> 2.20 (-0.21, -8.7%) breaks rule acceptance_length:-0.1;")


def test_category_rule_expands_to_common_categories():
    base = info()
    cur = info(acceptance_length_by_category={"coding": 2.5, "math": 2.6, "roleplay": 1.2})
    v = gates.evaluate(PARAMS, cur, rules=gates.parse_fail_rules("acceptance_length_by_category:-5%"),
                       baseline_extra_info=base)
    assert [(c.metric, c.outcome) for c in v.checks] == [
        ("acceptance_length_by_category.coding", "fail"),
        ("acceptance_length_by_category.math", "pass"),
    ]


def test_missing_baseline_is_reported_not_failed():
    v = gates.evaluate(PARAMS, info(), rules=gates.parse_fail_rules(RULES), baseline_extra_info=None)
    assert v.verdict == "skip"
    assert v.reasons == ["no baseline result for this case; regression rules not applied"]
    v2 = gates.evaluate(PARAMS, info(), rules=gates.parse_fail_rules("speedup_output_tps:-5%"),
                        baseline_extra_info=info())
    assert v2.verdict == "skip" and "not measured in this run" in v2.reasons[0]


def test_verdict_as_dict_matches_gate_schema():
    v = gates.evaluate(PARAMS, info(al=2.36), rules=gates.parse_fail_rules(RULES), baseline_extra_info=info())
    assert v.as_dict() == {"verdict": "pass", "reasons": [], "checks": [{
        "kind": "rule", "metric": "acceptance_length", "rule": "acceptance_length:-3%", "outcome": "pass",
        "current": 2.36, "baseline": 2.41, "change_pct": pytest.approx(-2.0747, abs=1e-3),
        "interval": [2.30, 2.52], "message": "acceptance_length: 2.41 -> 2.36 (-2.1%) within rule acceptance_length:-3%",
    }]}
    json.dumps(v.as_dict())  # stored in the results file as is
    assert gates.evaluate(PARAMS, info()).as_dict() == {"verdict": "skip", "reasons": [], "checks": []}


# ------------------------------------------------------------------------------ baseline lookup, JUnit


def test_find_baseline_by_params_then_name():
    doc = json.loads((RESULTS / "0001_baseline.json").read_text())
    params = {**PARAMS, "batch_size": 16, "split": "throughput", "bucket": "1k", "temperature": 0}
    found = gates.find_baseline(doc, params)
    expected = next(b for b in doc["benchmarks"] if b["param"] == "sglang-eagle3-throughput-1k-bs16-t0")
    assert found == expected["extra_info"]
    assert gates.find_baseline(doc, {**params, "batch_size": 2}) is None
    renamed = copy.deepcopy(doc)
    for b in renamed["benchmarks"]:
        b["params"] = {}
    assert gates.find_baseline(renamed, params, name="sglang-eagle3-throughput-1k-bs16-t0") == expected["extra_info"]
    assert gates.find_baseline(None, params) is None


def test_junit_properties():
    props = dict(gates.junit_properties({**info(), "al_source": "counters", "gate": {"verdict": "fail"}}))
    assert props["speedbench.acceptance_length"] == "2.41"
    assert props["speedbench.acceptance_length_ci95"] == "2.3,2.52"
    assert props["speedbench.ttft_s.p99"] == "0.08"
    assert props["speedbench.speedup_user_tps_ci95"] == "1.7,1.9"
    assert props["speedbench.al_source"] == "counters"
    assert props["speedbench.gate"] == "fail"
    assert "speedbench.speedup_output_tps" not in props  # absent metrics are not recorded
    assert all(isinstance(v, str) for v in props.values())
