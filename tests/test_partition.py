"""The shard partition: which shard a process is, start groups, the cost model, balance."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_speedbench.errors import UsageError
from pytest_speedbench.settings.matrix import BUCKETS, Case, expand
from pytest_speedbench.settings.partition import (
    BALANCE_FACTOR, CostModel, Workload, balance_bound, case_cost, matrix_costs, partition, shard_from, start_groups,
)


def key(case: Case) -> str:
    gamma = "" if case.draft_length is None else f"-g{case.draft_length}"
    return f"{case.engine}-{case.drafter}{gamma}"


LOAD = Workload(num_prompts=4, categories=0, output_len=64, rounds=2, warmup=1)


def groups_of(cases, *, launched, load=LOAD):
    return start_groups(cases, key, launched=launched, costs=matrix_costs(cases, load))


# -- which shard ---------------------------------------------------------------------------------


def test_explicit_shard_and_its_errors():
    spec = shard_from("2/3", {})
    assert (spec.index, spec.count, spec.label) == (2, 3, "2/3")
    assert shard_from(None, {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3"}) is None
    with pytest.raises(UsageError, match=r"shard 4 is outside 1\.\.3"):
        shard_from("4/3", {})
    with pytest.raises(UsageError, match=r"shard 0 is outside"):
        shard_from("0/3", {})
    with pytest.raises(UsageError, match=r"expected K/N .* or auto"):
        shard_from("two of three", {})


@pytest.mark.parametrize("env, expected", [
    ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "0"}, (1, 4)),
    ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}, (4, 4)),
    ({"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "0",
      "SLURM_ARRAY_TASK_STEP": "2"}, (4, 4)),
    ({"JOB_COMPLETION_INDEX": "0", "SPEEDBENCH_SHARD_COUNT": "3"}, (1, 3)),
    ({"JOB_COMPLETION_INDEX": "2", "SPEEDBENCH_SHARD_COUNT": "3"}, (3, 3)),
])
def test_auto_reads_the_schedulers_variables(env, expected):
    spec = shard_from("auto", env)
    assert (spec.index, spec.count) == expected
    assert next(iter(env)) in spec.source


def test_auto_without_a_scheduler_or_count_says_what_it_looked_for():
    with pytest.raises(UsageError, match="SLURM_ARRAY_TASK_ID.*JOB_COMPLETION_INDEX"):
        shard_from("auto", {})
    with pytest.raises(UsageError, match="SPEEDBENCH_SHARD_COUNT is not"):
        shard_from("auto", {"JOB_COMPLETION_INDEX": "1"})
    with pytest.raises(UsageError, match="shard 5 is outside 1..4"):
        shard_from("auto", {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"})


# -- groups and costs -----------------------------------------------------------------------------


def demo_matrix(**kw):
    args = dict(engines=["hf", "llamacpp"], drafters=["none", "ngram", "draft"], splits=["qualitative"],
                buckets=[], batch_sizes=[1, 4], temperatures=[0.0])
    args.update(kw)
    return list(expand(**args).cases)


def test_launched_engines_group_per_engine_attached_servers_per_twin_pair():
    cases = demo_matrix()
    launched = groups_of(cases, launched=True)
    assert sorted({c.engine for c in g.cases}.pop() for g in launched) == ["hf", "llamacpp"]
    assert all(len({c.engine for c in g.cases}) == 1 for g in launched)
    assert [g.starts for g in launched] == [3, 3]  # none, ngram, draft: each starts once
    attached = groups_of(cases, launched=False)
    # one group per (engine, batch size): the AR case and every SD case measured against it
    assert len(attached) == 4
    assert all({c.drafter for c in g.cases} == {"none", "ngram", "draft"} for g in attached)
    assert all(g.starts == 0 for g in attached)


def test_launched_engines_can_be_grouped_by_twin_pairs_with_their_starts_costed():
    cases = demo_matrix()
    costs = matrix_costs(cases, LOAD)
    pairs = start_groups(cases, key, launched=True, costs=costs, whole_instances=False)
    attached = start_groups(cases, key, launched=False, costs=costs)
    assert [g.cases for g in pairs] == [g.cases for g in attached]  # the same 4 groups
    assert [g.starts for g in pairs] == [3, 3, 3, 3]  # each shard starts the instances its pair needs
    assert all(p.cost == a.cost + 3 * CostModel().start_steps for p, a in zip(pairs, attached))


def test_sd_cases_without_a_twin_stand_alone_when_attached():
    cases = demo_matrix(drafters=["ngram"], engines=["hf"])
    assert [len(g.cases) for g in groups_of(cases, launched=False)] == [1, 1]


def test_cost_grows_with_prompts_output_rounds_and_isl_and_falls_with_batch():
    base = Case("vllm", "eagle3", "throughput", "1k", 1, 0.0)
    cost = lambda case=base, **kw: case_cost(case, **{"requests": 48, "output_len": 64, "passes": 4,  # noqa: E731
                                                     "warmup": 1, **kw})
    assert cost(requests=96) > cost()
    assert cost(output_len=128) > cost()
    assert cost(passes=6) > cost()
    assert cost(Case("vllm", "eagle3", "throughput", "32k", 1, 0.0)) > cost()
    assert cost(Case("vllm", "eagle3", "throughput", "1k", 16, 0.0)) < cost()


def test_an_sd_case_with_its_twin_costs_its_rounds():
    cases = [Case("hf", "none", "qualitative", None, 1, 0.0), Case("hf", "ngram", "qualitative", None, 1, 0.0)]
    costs = matrix_costs(cases, LOAD)
    waves = 4 * 11 * (1 + 1 / 64)  # 4 prompts x 11 categories at batch size 1
    expected = (2 * LOAD.rounds * waves + LOAD.warmup) / (waves + LOAD.warmup)
    assert costs[cases[1]] / costs[cases[0]] == pytest.approx(expected)


def test_partition_is_deterministic_and_a_shard_can_be_empty():
    cases = demo_matrix()
    plan = partition(groups_of(cases, launched=True), 3)
    again = partition(groups_of(list(cases), launched=True), 3)
    assert plan.as_dict() == again.as_dict() and plan.fingerprint() == again.fingerprint()
    assert sorted(len(plan.cases(k)) for k in (1, 2, 3)) == [0, 6, 6]


# -- the property over generated matrices ----------------------------------------------------------

matrices = st.fixed_dictionaries({
    "engines": st.lists(st.sampled_from(["hf", "llamacpp", "vllm", "sglang", "trtllm"]), min_size=1, max_size=3,
                        unique=True),
    "drafters": st.lists(st.sampled_from(["none", "ngram", "draft"]), min_size=1, max_size=3, unique=True),
    "splits": st.lists(st.sampled_from(["qualitative", "throughput", "random"]), min_size=1, max_size=3,
                       unique=True),
    "buckets": st.lists(st.sampled_from(BUCKETS), min_size=1, max_size=3, unique=True),
    "batch_sizes": st.lists(st.sampled_from([1, 2, 4, 16, 64]), min_size=1, max_size=3, unique=True),
    "temperatures": st.lists(st.sampled_from([0.0, 0.7]), min_size=1, max_size=2, unique=True),
    "draft_lengths": st.lists(st.integers(1, 5), max_size=3, unique=True),
})


@settings(max_examples=120, deadline=None)
@given(matrix=matrices, count=st.integers(1, 12), launched=st.booleans(),
       load=st.builds(Workload, num_prompts=st.integers(1, 80), categories=st.integers(0, 11),
                      output_len=st.integers(1, 2048), rounds=st.integers(1, 4), warmup=st.integers(0, 4),
                      repeat_check=st.booleans()))
def test_every_case_in_one_shard_groups_whole_and_balanced(matrix, count, launched, load):
    cases = list(expand(**matrix).cases)
    groups = start_groups(cases, key, launched=launched, costs=matrix_costs(cases, load))
    plan = partition(groups, count)
    placed = [c for k in range(1, count + 1) for c in plan.cases(k)]
    assert sorted(c.id for c in placed) == sorted(c.id for c in cases)  # each case exactly once
    assert len(placed) == len(set(placed))
    shard_of, members, shards_of_key = plan.shard_of(), set(cases), {}
    for case in cases:  # groups never split: a twin pair, and (launched) an engine instance
        if case.is_speculative and case.twin() in members:
            assert shard_of[case.id] == shard_of[case.twin().id]
        shards_of_key.setdefault(key(case), set()).add(shard_of[case.id])
    if launched:
        assert all(len(shards) == 1 for shards in shards_of_key.values())
    costs = [plan.cost(k) for k in range(1, count + 1)]
    mean, ranked = sum(costs) / count, sorted((g.cost for g in groups), reverse=True)
    assert max(costs) <= (mean + ranked[0]) * (1 + 1e-9)  # the last group placed went to a shard below the mean
    lower = max(mean, ranked[0], ranked[count - 1] + ranked[count] if len(ranked) > count else 0)
    assert max(costs) <= BALANCE_FACTOR * lower * (1 + 1e-9)  # Graham: within 4/3 of the best partition
    assert max(costs) <= balance_bound(groups, count) * (1 + 1e-9)
    shuffled = partition(list(reversed(groups)), count)  # the order groups are found in does not matter
    assert [{c.id for c in shuffled.cases(k)} for k in range(1, count + 1)] == \
        [{c.id for c in plan.cases(k)} for k in range(1, count + 1)]


def test_cost_model_constants_are_documented():
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "scale-out.md").read_text()
    model = CostModel()
    for name in ("qualitative_isl", "context_doubling", "prefill_per_step", "batch_doubling", "start_steps"):
        assert f"{name} = {getattr(model, name):g}" in page, name
